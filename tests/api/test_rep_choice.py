"""Which rep gets a lead: filters, expertise, capacity, strategies, re-routing, the file sync."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import BUNDLED_RULES_DIR
from leadscore_api.service import reps as service
from leadscore_api.service.rep_file import (
    DirectoryFileError,
    directory_file_in,
    load_directory_file,
)
from leadscore_api.service.reps import RepFields
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.directory_models import Rep
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import Lead
from leadscore_api.storage.repositories import reps as reps_repo
from leadscore_api.storage.unit_of_work import in_transaction

Factory = sessionmaker[Session]


def _rep(factory: Factory, rep_id: str, team: str = "north-team", **fields: Any) -> None:
    service.create_rep(factory, RepFields(name=rep_id.title(), team=team, **fields), rep_id)


def _leads(factory: Factory, owner: str | None, count: int, **fields: Any) -> list[str]:
    """``count`` leads owned by ``owner`` (stage ``lead`` unless given)."""
    ids: list[str] = []

    def work(session: Session) -> None:
        start = len(list(session.scalars(select(Lead.id))))
        for i in range(count):
            lead_id = f"lead_{start + i:04d}"
            session.add(Lead(id=lead_id, owner=owner, **fields))
            ids.append(lead_id)

    in_transaction(factory, work)
    return ids


def _choose(
    factory: Factory, team: str, attributes: dict[str, Any], strategy: str | None = None
) -> str | None:
    def work(session: Session) -> str | None:
        rep = service.choose_rep(session, team, attributes, strategy)
        return rep.id if rep is not None else None

    return in_transaction(factory, work)


def _picks(factory: Factory, team: str, attributes: dict[str, Any], times: int) -> list[str | None]:
    return [_choose(factory, team, attributes) for _ in range(times)]


def _owners(factory: Factory, lead_ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    with factory() as session:
        rows = session.execute(select(Lead.id, Lead.owner, Lead.team).where(Lead.id.in_(lead_ids)))
        return {row.id: (row.owner, row.team) for row in rows}


def _assign(
    factory: Factory,
    team: str | None,
    attributes: dict[str, Any],
    current_owner: str | None,
) -> str | None:
    return in_transaction(
        factory,
        lambda session: service.assign_owner(session, "lead_x", team, attributes, current_owner),
    )


# -- the rotation and the strategies ------------------------------------------------------------


def test_round_robin_goes_around_three_reps(session_factory: Factory) -> None:
    for rep_id in ("carla", "anna", "bruno"):
        _rep(session_factory, rep_id)
    _rep(session_factory, "other", team="inside-sales")

    assert _picks(session_factory, "north-team", {}, 7) == [
        "anna",
        "bruno",
        "carla",
        "anna",
        "bruno",
        "carla",
        "anna",
    ]
    with session_factory() as session:
        served = {rep.id: rep.last_assigned_at for rep in reps_repo.list_reps(session)}
    assert served["other"] is None
    assert served["anna"] is not None and served["carla"] is not None
    assert served["carla"] < served["anna"]


def test_a_new_rep_is_served_first_then_joins_the_rotation(session_factory: Factory) -> None:
    _rep(session_factory, "anna")
    _rep(session_factory, "bruno")
    assert _picks(session_factory, "north-team", {}, 2) == ["anna", "bruno"]
    _rep(session_factory, "zoe")
    assert _picks(session_factory, "north-team", {}, 4) == ["zoe", "anna", "bruno", "zoe"]


def test_least_open_leads_counts_only_open_stages(session_factory: Factory) -> None:
    for rep_id in ("anna", "bruno", "carla"):
        _rep(session_factory, rep_id)
    _leads(session_factory, "anna", 2)
    _leads(session_factory, "carla", 1, stage="mql")
    # Converted and won leads no longer weigh on bruno.
    _leads(session_factory, "bruno", 3, stage="customer")
    _leads(session_factory, "bruno", 1, stage="opportunity")

    assert _choose(session_factory, "north-team", {}, "least_open") == "bruno"
    _leads(session_factory, "bruno", 1, stage="sql")
    # bruno and carla have one open lead each: the rotation breaks the tie (carla waited longer).
    assert _choose(session_factory, "north-team", {}, "least_open") == "carla"
    _leads(session_factory, "carla", 1)
    assert _choose(session_factory, "north-team", {}, "least_open") == "bruno"


def test_the_stored_strategy_of_the_team_or_the_directory_is_used(
    session_factory: Factory,
) -> None:
    for rep_id in ("anna", "bruno"):
        _rep(session_factory, rep_id)
    _leads(session_factory, "anna", 0)
    _leads(session_factory, "bruno", 2)
    assert _picks(session_factory, "north-team", {}, 2) == ["anna", "bruno"]

    def store(wanted: dict[str, str]) -> None:
        in_transaction(
            session_factory,
            lambda session: reps_repo.replace_strategies(session, wanted, utcnow()),
        )

    store({"*": "least_open"})
    assert _picks(session_factory, "north-team", {}, 2) == ["anna", "anna"]
    store({"*": "least_open", "north-team": "round_robin"})
    assert _picks(session_factory, "north-team", {}, 2) == ["bruno", "anna"]
    with session_factory() as session:
        assert service.team_strategy(session, "north-team") == "round_robin"
        assert service.team_strategy(session, "inside-sales") == "least_open"


def test_an_unknown_strategy_is_a_programming_error(session_factory: Factory) -> None:
    _rep(session_factory, "anna")
    with pytest.raises(ValueError, match="unknown strategy"):
        _choose(session_factory, "north-team", {}, "fastest")


# -- which reps can take the lead ---------------------------------------------------------------


def test_expertise_is_preferred_and_other_industries_are_excluded(
    session_factory: Factory,
) -> None:
    _rep(session_factory, "anna")
    _rep(session_factory, "bruno", industries=["Manifatturiero", "manufacturing"])
    _rep(session_factory, "carla", industries=["software"])

    manufacturer = {"industry": " MANIFATTURIERO "}
    assert _picks(session_factory, "north-team", manufacturer, 3) == ["bruno"] * 3
    # Retail: only the rep without an industry list takes it.
    assert _picks(session_factory, "north-team", {"industry": "retail"}, 2) == ["anna", "anna"]
    # Unknown industry: everybody may take it, nobody is preferred.
    assert _picks(session_factory, "north-team", {}, 3) == ["carla", "bruno", "anna"]


def test_regions_and_company_size_filter_reps(session_factory: Factory) -> None:
    _rep(session_factory, "lombardia", regions=["Lombardia", "Piemonte"])
    _rep(session_factory, "sicilia", regions=["Sicilia"])
    _rep(session_factory, "big", min_employees=250)
    _rep(session_factory, "small", max_employees=49)

    def one(attributes: dict[str, Any]) -> set[str | None]:
        return set(_picks(session_factory, "north-team", attributes, 4))

    assert one({"region": "lombardia", "employees": 300}) == {"lombardia", "big"}
    assert one({"region": "PIEMONTE", "employees": 10}) == {"lombardia", "small"}
    assert one({"region": "Sicilia", "employees": "120"}) == {"sicilia"}
    assert one({"region": "Lazio", "employees": 100}) == {None}
    assert one({"region": "Lazio", "employees": 250}) == {"big"}
    assert one({"region": "Lazio", "employees": 49}) == {"small"}
    # A missing or unreadable attribute excludes nobody.
    assert one({"employees": "molti"}) == {"lombardia", "sicilia", "big", "small"}


def test_full_reps_are_skipped_and_nobody_is_chosen_when_all_are_full(
    session_factory: Factory,
) -> None:
    _rep(session_factory, "anna", capacity=1)
    _rep(session_factory, "bruno", capacity=2)
    _rep(session_factory, "carla", capacity=0)
    _leads(session_factory, "anna", 1)
    _leads(session_factory, "anna", 5, stage="customer")

    assert _choose(session_factory, "north-team", {}) == "bruno"
    _leads(session_factory, "bruno", 1)
    assert _choose(session_factory, "north-team", {}) == "bruno"
    _leads(session_factory, "bruno", 1)
    assert _choose(session_factory, "north-team", {}) is None
    assert _choose(session_factory, "north-team", {}, "least_open") is None


def test_capacity_comes_before_expertise(session_factory: Factory) -> None:
    _rep(session_factory, "expert", industries=["software"], capacity=1)
    _rep(session_factory, "generalist")
    assert _choose(session_factory, "north-team", {"industry": "software"}) == "expert"
    _leads(session_factory, "expert", 1)
    assert _choose(session_factory, "north-team", {"industry": "software"}) == "generalist"


def test_inactive_reps_and_other_teams_get_nothing(session_factory: Factory) -> None:
    _rep(session_factory, "anna", active=False)
    _rep(session_factory, "bruno", team="centre-south-team")
    assert _choose(session_factory, "north-team", {}) is None
    assert _choose(session_factory, "nobody-team", {}) is None


# -- assign_owner: what the scoring path calls --------------------------------------------------


def test_assign_owner_keeps_an_active_rep_of_the_team(session_factory: Factory) -> None:
    _rep(session_factory, "anna")
    _rep(session_factory, "bruno")
    _rep(session_factory, "carla", team="centre-south-team")
    _rep(session_factory, "dario", active=False)

    assert _assign(session_factory, "north-team", {}, None) == "anna"
    assert _assign(session_factory, "north-team", {}, "bruno") == "bruno"
    # Kept even when the rotation would pick somebody else, and without moving the rotation.
    assert _assign(session_factory, "north-team", {}, "anna") == "anna"
    assert _choose(session_factory, "north-team", {}) == "bruno"
    # A rep of another team, an inactive rep, a team name stored as owner: chosen again.
    assert _assign(session_factory, "north-team", {}, "carla") == "anna"
    assert _assign(session_factory, "north-team", {}, "dario") == "bruno"
    assert _assign(session_factory, "north-team", {}, "north-team") == "anna"
    assert _assign(session_factory, "centre-south-team", {}, "anna") == "carla"
    # No team (no routing rule, no default owner), or nobody in the team: no owner.
    assert _assign(session_factory, None, {}, "anna") is None
    assert _assign(session_factory, "inside-sales", {}, None) is None


# -- re-routing --------------------------------------------------------------------------------


def test_deactivation_hands_open_leads_to_the_rest_of_the_team(session_factory: Factory) -> None:
    for rep_id in ("anna", "bruno", "carla"):
        _rep(session_factory, rep_id)
    _rep(session_factory, "elsewhere", team="inside-sales")
    open_ids = _leads(session_factory, "anna", 4, attributes={"region": "Lombardia"})
    closed = _leads(session_factory, "anna", 1, stage="customer")
    with session_factory() as session:
        versions = {i: v for i, v in session.execute(select(Lead.id, Lead.version))}

    done = service.deactivate_rep(session_factory, "anna")

    assert (done.reroute.moved, done.reroute.unassigned) == (4, 0)
    assert done.rep.rep.active is False and done.rep.open_leads == 0
    owners = _owners(session_factory, open_ids + closed)
    assert [owners[lead_id][0] for lead_id in open_ids] == ["bruno", "carla", "bruno", "carla"]
    assert {owners[lead_id][1] for lead_id in open_ids} == {"north-team"}
    assert owners[closed[0]] == ("anna", None)
    with session_factory() as session:
        after = {i: v for i, v in session.execute(select(Lead.id, Lead.version))}
    assert all(after[lead_id] == versions[lead_id] + 1 for lead_id in open_ids)
    assert after[closed[0]] == versions[closed[0]]
    # Deactivating again finds nothing left to move.
    assert service.deactivate_rep(session_factory, "anna").reroute.owners == {}


def test_rerouting_follows_the_leads_team_and_filters(session_factory: Factory) -> None:
    _rep(session_factory, "anna", regions=["Lombardia"])
    _rep(session_factory, "bruno", regions=["Veneto"])
    _rep(session_factory, "carla", team="key-accounts")
    north = _leads(session_factory, "anna", 1, attributes={"region": "Veneto"})
    lonely = _leads(session_factory, "anna", 1, attributes={"region": "Lombardia"})
    routed = _leads(session_factory, "anna", 1, team="key-accounts")

    done = service.deactivate_rep(session_factory, "anna")

    assert (done.reroute.moved, done.reroute.unassigned) == (2, 1)
    owners = _owners(session_factory, north + lonely + routed)
    assert owners[north[0]] == ("bruno", "north-team")
    # Nobody else covers Lombardia: the lead keeps its team and waits without an owner.
    assert owners[lonely[0]] == (None, "north-team")
    assert owners[routed[0]] == ("carla", "key-accounts")


def test_moving_a_rep_to_another_team_hands_its_leads_to_the_old_team(
    session_factory: Factory,
) -> None:
    _rep(session_factory, "anna")
    _rep(session_factory, "bruno")
    leads = _leads(session_factory, "anna", 2)

    view = service.update_rep(
        session_factory, "anna", service.RepChanges(given=frozenset({"team"}), team="key-accounts")
    )

    assert view.rep.team == "key-accounts" and view.open_leads == 0
    assert set(_owners(session_factory, leads).values()) == {("bruno", "north-team")}


# -- the directory file ------------------------------------------------------------------------

_FILE = """\
strategy: least_open
teams:
  north-team: {strategy: round_robin}
reps:
  - id: anna
    name: Anna Verdi
    team: north-team
    regions: [Lombardia]
  - id: bruno
    name: Bruno Neri
    team: north-team
    capacity: 10
  - id: carla
    name: Carla Gialli
    team: north-team
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "reps.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _stored(factory: Factory) -> dict[str, Rep]:
    with factory() as session:
        return {rep.id: rep for rep in reps_repo.list_reps(session)}


def test_the_bundled_directory_loads_and_syncs(session_factory: Factory) -> None:
    path = directory_file_in(BUNDLED_RULES_DIR)
    assert path is not None
    report = service.sync_directory(session_factory, path)
    assert len(report.created) == 17 and not report.deactivated
    stored = _stored(session_factory)
    teams = {rep.team for rep in stored.values()}
    assert teams == {
        "key-accounts",
        "north-manufacturing",
        "north-team",
        "centre-south-team",
        "inside-sales",
    }
    assert stored["roberto.fontana"].active is False
    assert all(rep.source == "file" for rep in stored.values())
    with session_factory() as session:
        assert service.team_strategy(session, "key-accounts") == "least_open"
        assert service.team_strategy(session, "north-team") == "round_robin"
    # A manufacturer from Veneto with 300 employees goes to the northern manufacturing expert.
    assert (
        _assign(
            session_factory,
            "key-accounts",
            {"region": "Veneto", "industry": "manifatturiero", "employees": 300},
            None,
        )
        == "giulia.bianchi"
    )
    # Syncing the same file again changes nothing.
    again = service.sync_directory(session_factory, path)
    assert len(again.unchanged) == 17 and not (again.created or again.updated)


def test_sync_upserts_and_deactivates_reps_missing_from_the_file(
    session_factory: Factory, tmp_path: Path
) -> None:
    report = service.sync_directory(session_factory, _write(tmp_path, _FILE))
    assert report.created == ["anna", "bruno", "carla"]
    _rep(session_factory, "api-rep")
    leads = _leads(session_factory, "carla", 3)
    with session_factory() as session:
        assert reps_repo.strategies(session) == {"*": "least_open", "north-team": "round_robin"}

    changed = _FILE.replace("capacity: 10", "capacity: 20").replace(
        "  - id: carla\n    name: Carla Gialli\n    team: north-team\n",
        "  - id: dario\n    name: Dario Blu\n    team: north-team\n    active: false\n",
    )
    changed = changed.replace("teams:\n  north-team: {strategy: round_robin}\n", "")
    report = service.sync_directory(session_factory, _write(tmp_path, changed))

    assert report.created == ["dario"]
    assert report.updated == ["bruno"]
    assert report.unchanged == ["anna"]
    assert report.deactivated == ["carla"]
    assert (report.moved, report.unassigned) == (3, 0)
    stored = _stored(session_factory)
    assert stored["bruno"].capacity == 20
    assert stored["carla"].active is False and stored["carla"].source == "file"
    assert stored["dario"].active is False
    # A rep made through the API is not the file's to deactivate.
    assert stored["api-rep"].active is True and stored["api-rep"].source == "api"
    # The team now uses the directory-wide least_open: leads went to whoever had fewest.
    owners = [owner for owner, _team in _owners(session_factory, leads).values()]
    assert sorted(owners, key=str) == ["anna", "api-rep", "bruno"]
    with session_factory() as session:
        assert reps_repo.strategies(session) == {"*": "least_open"}

    # Listed again (even changed through the API meanwhile), the file's version comes back.
    service.update_rep(
        session_factory, "anna", service.RepChanges(given=frozenset({"name"}), name="Anna B.")
    )
    report = service.sync_directory(session_factory, _write(tmp_path, _FILE))
    assert report.reactivated == ["carla"]
    assert report.deactivated == []
    stored = _stored(session_factory)
    assert stored["anna"].name == "Anna Verdi" and stored["carla"].active is True
    assert stored["dario"].active is False


def test_sync_adopts_an_api_rep_listed_in_the_file(
    session_factory: Factory, tmp_path: Path
) -> None:
    _rep(session_factory, "anna", team="inside-sales")
    service.sync_directory(session_factory, _write(tmp_path, _FILE))
    anna = _stored(session_factory)["anna"]
    assert (anna.source, anna.team, anna.name) == ("file", "north-team", "Anna Verdi")


def test_a_bad_file_is_refused_with_file_and_line_before_any_change(
    session_factory: Factory, tmp_path: Path
) -> None:
    bad = _FILE.replace("capacity: 10", "capacity: -1").replace(
        "    regions: [Lombardia]\n", "    regions: [Lombardia]\n    colour: red\n"
    )
    path = _write(tmp_path, bad)
    with pytest.raises(DirectoryFileError) as caught:
        service.sync_directory(session_factory, path)
    lines = str(caught.value).splitlines()
    assert lines == [
        f"{path}:9: reps[0]: unknown field 'colour'",
        f"{path}:13: reps[1].capacity: Input should be greater than or equal to 0",
    ]
    assert _stored(session_factory) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reps: [\n", "2: invalid YAML"),
        ("- anna\n", "1: a rep directory file must be a mapping"),
        (_FILE + "  - id: anna\n    name: Again\n    team: x\n", "16: reps[3].id: 'anna' is also"),
        (_FILE.replace("id: carla", "id: north-team"), "13: reps[2].id: 'north-team' is also a"),
        (_FILE.replace("strategy: least_open", "strategy: fastest"), "1: strategy: Input should"),
        (_FILE.replace("team: north-team\n    capacity", "team: '*'\n    capacity"), "11: reps[1]"),
        (
            _FILE.replace("capacity: 10", "min_employees: 50\n    max_employees: 10"),
            "9: reps[1]: max_employees (10) is below min_employees (50)",
        ),
        ("reps:\n  - id: x y\n    name: n\n    team: t\n", "2: reps[0].id: use letters"),
        (
            "reps:\n  - id: x\n    name: n\n    team: t\n    email: nope\n",
            "5: reps[0].email: is not an email address",
        ),
        ("reps:\n  - id: x\n    name: n\n    team: t\n    team: u\n", "5: invalid YAML: duplicate"),
    ],
)
def test_file_problems_name_their_line(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DirectoryFileError) as caught:
        load_directory_file(path)
    assert f"{path}:{expected}" in str(caught.value), str(caught.value)


def test_an_empty_file_is_an_empty_directory(tmp_path: Path) -> None:
    directory = load_directory_file(_write(tmp_path, "# nobody yet\n"))
    assert directory.reps == [] and directory.strategies() == {"*": "round_robin"}


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DirectoryFileError, match="cannot read the file"):
        load_directory_file(tmp_path / "nope.yaml")


# -- concurrency (PostgreSQL: SQLite has one writer anyway) ------------------------------------


def test_concurrent_choices_in_a_team_take_turns(pg_url: str) -> None:
    """A second transaction waits for the first one's choice, then sees the slot it took."""
    upgrade_database(pg_url)
    engine = make_engine(pg_url)
    factory = make_session_factory(engine)
    try:
        _rep(factory, "anna", capacity=1)
        _rep(factory, "bruno")
        first_chose = threading.Event()
        release = threading.Event()

        def first(session: Session) -> str | None:
            rep = service.choose_rep(session, "north-team", {})
            assert rep is not None
            session.add(Lead(id="lead_first", owner=rep.id))
            session.flush()
            first_chose.set()
            assert release.wait(10)
            return rep.id

        def second(session: Session) -> str | None:
            rep = service.choose_rep(session, "north-team", {})
            return rep.id if rep is not None else None

        with ThreadPoolExecutor(max_workers=2) as pool:
            one = pool.submit(in_transaction, factory, first)
            assert first_chose.wait(10)
            two = pool.submit(in_transaction, factory, second)
            time.sleep(0.3)
            assert not two.done(), "the second choice should wait for the team's lock"
            release.set()
            # anna took the lead and is now full; without the lock both would have picked her.
            assert (one.result(10), two.result(10)) == ("anna", "bruno")
        assert _choose(factory, "north-team", {}) == "bruno"
    finally:
        engine.dispose()
