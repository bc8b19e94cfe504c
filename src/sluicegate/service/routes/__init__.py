"""The service's routers, one module per area: the original ``/exports``, tasks, runs, operations."""
