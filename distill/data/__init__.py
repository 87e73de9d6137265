from distill.data.glue import GLUEDataModule
from distill.data.tasks import TASKS, TaskSpec, get_task

__all__ = ["GLUEDataModule", "TASKS", "TaskSpec", "get_task"]
