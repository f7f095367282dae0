"""Search and analysis in OpenSearch: the documents Pulse indexes (``documents``), their
daily indices, aliases and templates (``indices``), the client (``client``), and the queries
the search API and ``pulse search`` run (``queries``). The indexer that writes them is
agents/indexer.py with its sink pulse/sinks/search.py; docs/search.md tells the whole."""
