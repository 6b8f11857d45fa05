"""GLUE data: task specs and official metrics, loaders (local files or the datasets cache), the offline demo
sentiment task, and client sharding (`fedctl data shard glue`)."""

from fedctl.data.glue.load import GlueSplit, load_glue
from fedctl.data.glue.metrics import glue_metrics
from fedctl.data.glue.shard import make_shards, read_shards, shard_glue
from fedctl.data.glue.tasks import GLUE_TASKS, GlueSpec, get_spec

__all__ = ["GLUE_TASKS", "GlueSpec", "GlueSplit", "get_spec", "glue_metrics", "load_glue", "make_shards",
           "read_shards", "shard_glue"]
