"""Every SQL statement of the service, one module per table or aggregate.

Services call these functions inside a unit of work (:mod:`leadscore_api.storage.unit_of_work`);
nothing above ``storage`` builds a query.
"""
