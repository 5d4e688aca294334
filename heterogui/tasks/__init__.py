"""Tasks a pair of models is scored on; ``TASKS`` maps a task kind to its task.

Importing the package registers every task (image classification, sentence similarity, text
classification, language modelling).
"""

from heterogui.tasks import images, language, sentences, text_classes
from heterogui.tasks.base import TASKS, Calibration, Evaluation, Task, task_of

__all__ = [
    "TASKS",
    "Calibration",
    "Evaluation",
    "Task",
    "images",
    "language",
    "sentences",
    "task_of",
    "text_classes",
]
