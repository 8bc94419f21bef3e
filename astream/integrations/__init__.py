"""Writing and reading astream datasets from distributed engines.

- :mod:`astream.integrations.spark`: ``dataframe_to_mds`` (``pip install 'astream[spark]'``);
- :mod:`astream.integrations.ray`: ``MDSDatasink`` and ``read_mds`` (``pip install
  'astream[ray]'``).

Both write by the protocol of :mod:`astream.integrations.parts`: each task attempt writes its
own prefix of ``out``, and the driver writes the merged ``index.json`` last, naming only the
attempts the engine committed. Nothing here imports pyspark or ray until it is used.
"""

from __future__ import annotations
