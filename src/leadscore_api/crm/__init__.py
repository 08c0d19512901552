"""CRM connectors: scores and hand-over tasks out to HubSpot, Salesforce, Zoho CRM and
Pipedrive, and their deals and first contacts back in as outcomes. ``base.py`` is the contract."""
