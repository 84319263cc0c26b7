"""Tasks: datasets, partitions over workers, models and losses."""

from .datasets import Dataset
from .models import build_model
from .task import Task, make_task

__all__ = ["Dataset", "Task", "build_model", "make_task"]
