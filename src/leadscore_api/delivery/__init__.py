"""Outbound webhooks on the wire: payloads, signing, retry schedule, SSRF guard and the worker.

Transitions are queued as outbox rows in the transaction that changed the lead
(:func:`leadscore_api.service.delivery.enqueue_transitions`), so a crash cannot lose one; the
worker (:mod:`leadscore_api.delivery.worker`) claims due rows, sends them signed as the
Standard Webhooks specification says and retries them on a schedule of about a day.
"""
