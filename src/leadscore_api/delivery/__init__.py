"""Outbound webhooks: subscriptions, the transactional outbox, signing and the delivery worker.

Transitions are written to the ``outbox_messages`` table in the transaction that changed the
lead (:func:`leadscore_api.delivery.outbox.enqueue_transitions`), so a crash cannot lose one; a
worker (:mod:`leadscore_api.delivery.worker`) claims due rows, sends them signed as the Standard
Webhooks specification says and retries them on a schedule of about a day.
"""
