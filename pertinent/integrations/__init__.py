"""Drop-in components for agent frameworks. Import the module of the framework you use:

    # pip install 'pertinent[llama-index]'
    from pertinent.integrations.llama_index import PertinentRetriever
    # pip install 'pertinent[langchain]'
    from pertinent.integrations.langchain import PertinentRetriever

Nothing is imported here on purpose: importing one framework's adapter must not load
(or require) the other framework. A module whose framework is missing raises
`pertinent.MissingDependency`, naming the extra to install.

The adapters only translate types and call `pertinent.Pertinent`; every ranking,
recording and packing decision is made in the core, so the two frameworks and the
plain API always agree (see docs/integrations.md).
"""
