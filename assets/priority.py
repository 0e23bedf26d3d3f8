"""Which steps an executor running several at once starts first.

The LLM profiles and what waits on them (the profile embeddings, then the text tower, which trains
longest) are the graph's longest chain: started only when a slot happens to be free, they leave the
towers that do not need them nothing to run beside at the end. Marked first, they start as soon as
their inputs exist and the other towers fill the remaining slot.
"""

LONGEST_CHAIN = {"dagster/priority": "1"}
"""Op tags of the steps on the profile chain (Dagster starts higher priorities first; default 0)."""
