"""The dashboard's labels in Italian and English, and the choice of language.

Italian first: the product is for Italian SMEs. The language comes from ``?lang=`` (then kept in
a cookie), else the cookie, else the browser's ``Accept-Language``; Italian when none of them
names a language the dashboard has.
"""

from __future__ import annotations

import re
from typing import Literal

Lang = Literal["it", "en"]
LANGS: tuple[Lang, ...] = ("it", "en")
DEFAULT_LANG: Lang = "it"
COOKIE = "leadscore_lang"

LABELS: dict[str, dict[Lang, str]] = {
    "title": {"it": "Cruscotto lead", "en": "Lead dashboard"},
    "sign_in": {"it": "Accedi", "en": "Sign in"},
    "sign_out": {"it": "Esci", "en": "Sign out"},
    "api_key": {"it": "Chiave API", "en": "API key"},
    "sign_in_help": {
        "it": "Inserisci una chiave API con l'ambito leads:read.",
        "en": "Enter an API key with the leads:read scope.",
    },
    "refused_invalid": {
        "it": "Chiave non valida (sconosciuta, malformata o revocata).",
        "en": "The key is not valid (unknown, malformed or revoked).",
    },
    "refused_scope": {
        "it": "Questa chiave non ha l'ambito leads:read.",
        "en": "This key lacks the leads:read scope.",
    },
    "refused_link_scope": {
        "it": "Il link per lo schermo accetta solo una chiave con il solo ambito leads:read.",
        "en": "The wall-screen link takes only a key whose only scope is leads:read.",
    },
    "refused_origin": {
        "it": "Richiesta rifiutata: non proviene da questa pagina.",
        "en": "Request refused: it did not come from this page.",
    },
    "period": {"it": "Periodo", "en": "Period"},
    "last_days": {"it": "ultimi {n} giorni", "en": "last {n} days"},
    "source": {"it": "Fonte", "en": "Source"},
    "owner": {"it": "Responsabile", "en": "Owner"},
    "all": {"it": "tutti", "en": "all"},
    "apply": {"it": "Applica", "en": "Apply"},
    "leads_in_period": {
        "it": "Lead arrivati nel periodo",
        "en": "Leads that arrived in the period",
    },
    "kpis": {"it": "Indicatori (KPI)", "en": "Key figures (KPIs)"},
    "figures_at": {"it": "dati delle {at}", "en": "figures as of {at}"},
    "target": {"it": "Obiettivo", "en": "Target"},
    "status_met": {"it": "Raggiunto", "en": "Met"},
    "status_missed": {"it": "Non raggiunto", "en": "Missed"},
    "status_unknown": {"it": "Non calcolabile", "en": "Unknown"},
    "freq_daily": {"it": "giornaliero", "en": "daily"},
    "freq_weekly": {"it": "settimanale", "en": "weekly"},
    "freq_monthly": {"it": "mensile", "en": "monthly"},
    "over": {"it": "su {n}", "en": "over {n}"},
    "unit_days": {"it": "giorni", "en": "days"},
    "unit_hours": {"it": "ore", "en": "hours"},
    "matrix": {"it": "Matrice lettera × punteggio", "en": "Letter × score matrix"},
    "letter": {"it": "Lettera", "en": "Letter"},
    "score": {"it": "Punteggio", "en": "Score"},
    "unlettered": {"it": "Lead senza lettera: {n}", "en": "Leads without a letter: {n}"},
    "funnel": {"it": "Imbuto", "en": "Funnel"},
    "step_lead": {"it": "Lead", "en": "Lead"},
    "step_mql": {"it": "MQL", "en": "MQL"},
    "step_sql": {"it": "SQL", "en": "SQL"},
    "step_opportunity": {"it": "Opportunità", "en": "Opportunity"},
    "step_won": {"it": "Vinti", "en": "Won"},
    "of_previous": {"it": "del passo prima", "en": "of the step before"},
    "by_band": {"it": "Conversione per fascia di punteggio", "en": "Conversion by score band"},
    "band": {"it": "Fascia", "en": "Band"},
    "leads": {"it": "Lead", "en": "Leads"},
    "opportunities": {"it": "Opportunità", "en": "Opportunities"},
    "won": {"it": "Vinti", "en": "Won"},
    "opportunity_rate": {"it": "Tasso opportunità", "en": "Opportunity rate"},
    "trend": {"it": "Soglie superate al giorno", "en": "Threshold crossings per day"},
    "crossings_total": {"it": "Totale nel periodo", "en": "Total in the period"},
    "queue": {"it": "Da chiamare: lead caldi", "en": "To call: hot leads"},
    "queue_empty": {"it": "Nessun lead caldo in coda.", "en": "No hot lead in the queue."},
    "lead": {"it": "Lead", "en": "Lead"},
    "tier": {"it": "Categoria", "en": "Tier"},
    "stage": {"it": "Fase", "en": "Stage"},
    "next_action": {"it": "Prossima azione", "en": "Next action"},
    "due": {"it": "Scadenza", "en": "Due"},
    "overdue": {"it": "In ritardo", "en": "Overdue"},
    "on_time": {"it": "In tempo", "en": "On time"},
    "none": {"it": "nessuna", "en": "none"},
    "attributes": {"it": "Attributi", "en": "Attributes"},
    "timeline": {"it": "Andamento del punteggio", "en": "Score timeline"},
    "changes": {"it": "Ogni cambiamento e il suo perché", "en": "Every change and why"},
    "no_changes": {"it": "Nessun cambiamento registrato.", "en": "No change recorded."},
    "when": {"it": "Quando (ora evento)", "en": "When (event time)"},
    "cause": {"it": "Causa", "en": "Cause"},
    "from_to": {"it": "Da → a", "en": "From → to"},
    "why": {"it": "Perché", "en": "Why"},
    "back": {"it": "Torna al cruscotto", "en": "Back to the dashboard"},
    "model": {"it": "Modello", "en": "Model"},
    "email": {"it": "Email", "en": "Email"},
    "created": {"it": "Creato", "en": "Created"},
    "error": {"it": "Errore", "en": "Error"},
    "not_found": {"it": "Nessun lead con questo id.", "en": "No lead with this id."},
    "bad_request": {"it": "Richiesta non valida", "en": "Bad request"},
    "signed_in_as": {"it": "Accesso con", "en": "Signed in with"},
}

#: The matrix's actions (rules/pmi-letter-score.yaml); an action not listed shows as written.
ACTIONS: dict[str, dict[Lang, str]] = {
    "wait": {"it": "attendere", "en": "wait"},
    "priority_contact": {"it": "contatto prioritario", "en": "priority contact"},
    "potential_sql": {"it": "potenziale SQL", "en": "potential SQL"},
    "nurture": {"it": "nurturing", "en": "nurture"},
    "mql": {"it": "MQL", "en": "MQL"},
    "sql": {"it": "SQL", "en": "SQL"},
    "no_action": {"it": "nessuna azione", "en": "no action"},
    "watch": {"it": "osservare", "en": "watch"},
    "re_evaluate": {"it": "rivalutare", "en": "re-evaluate"},
    "call": {"it": "chiamare", "en": "call"},
    "personal_email": {"it": "email personale", "en": "personal email"},
    "newsletter": {"it": "newsletter", "en": "newsletter"},
}


def choose(query: str | None, cookie: str | None, accept_language: str | None) -> Lang:
    for candidate in (query, cookie):
        if candidate in LANGS:
            return candidate
    for part in (accept_language or "")[:500].split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGS:
            return tag
    return DEFAULT_LANG


class Translator:
    """``t("key", n=3)`` in templates; an unknown key shows itself, never fails a page."""

    def __init__(self, lang: Lang) -> None:
        self.lang = lang

    def __call__(self, key: str, **values: object) -> str:
        entry = LABELS.get(key)
        text = entry[self.lang] if entry else key
        return text.format(**values) if values else text

    def action(self, name: str | None) -> str:
        if name is None:
            return "—"
        entry = ACTIONS.get(name)
        return entry[self.lang] if entry else name.replace("_", " ")


#: The reports service's notes (why a KPI is unknown or partial) in Italian: English pattern →
#: Italian text with the same groups. The API answers in English; only the page translates.
_NOTES_IT: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(f"^{pattern}$"), italian)
    for pattern, italian in (
        (r"no lead arrived in the period", "nessun lead è arrivato nel periodo"),
        (r"the model has no stage above lead", "il modello non ha stadi oltre «lead»"),
        (
            r"no lead of the period reached the MQL stage",
            "nessun lead del periodo ha raggiunto lo stadio MQL",
        ),
        (r"the model has no MQL and SQL stages", "il modello non ha gli stadi MQL e SQL"),
        (
            r"the model has no hand-over stage",
            "il modello non ha uno stadio di passaggio alle vendite",
        ),
        (
            r"no lead of the period was handed over to sales",
            "nessun lead del periodo è stato passato alle vendite",
        ),
        (
            r"none of the (\d+) leads handed over has a lead\.contacted outcome yet",
            r"nessuno dei \1 lead passati alle vendite ha ancora un esito lead.contacted",
        ),
        (
            r"(\d+) of (\d+) leads handed over are not contacted yet",
            r"\1 dei \2 lead passati alle vendite non sono ancora stati contattati",
        ),
        (
            r"no lead was handed over to sales more than a day ago",
            "nessun lead è stato passato alle vendite più di un giorno fa",
        ),
        (
            r"costs are entered per source, not per owner",
            "i costi si inseriscono per fonte, non per responsabile",
        ),
        (
            r"no acquisition costs are entered for the period's months",
            "nessun costo di acquisizione inserito per i mesi del periodo",
        ),
        (
            r"costs miss some of the period's months for: (.+)",
            r"mancano i costi di alcuni mesi del periodo per: \1",
        ),
        (
            r"leads from sources without costs for every month are left out: (.+)",
            r"esclusi i lead delle fonti senza costi per ogni mese: \1",
        ),
        (r"the sources with costs brought no lead", "le fonti con costi non hanno portato lead"),
    )
)


def kpi_note(note: str, lang: Lang) -> str:
    """A KPI's note in the page's language (an unknown note is shown as the service wrote it)."""
    if lang == "it":
        for pattern, italian in _NOTES_IT:
            if pattern.match(note):
                return pattern.sub(italian, note)
    return note
