"""Local stand-ins of the four CRMs' APIs, on loopback, for the connector and end-to-end tests.

Each stand-in (``hubspot.py``, ``salesforce.py``, ``zoho.py``, ``pipedrive.py``) implements the
documented requests and answers of its CRM that the connector uses (paths, auth, payloads,
pagination, rate-limit and error answers, notification signatures), keeps its records in memory
and records every call, so a test can assert the exact calls made.
"""
