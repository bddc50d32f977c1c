"""xverse-eval: reproduce the XVERSE-65B benchmark table, and evaluate any causal LM the same way."""
from .errors import EvalError
from .registry import register_task
from .task import GenerationTask, MultipleChoiceTask, Prepared, Task
from .types import GenerateRequest, Generation, Loglikelihood, LoglikelihoodRequest, Record, Sample, TaskResult

__version__ = "0.1.0"
__all__ = ["EvalError", "GenerateRequest", "Generation", "GenerationTask", "Loglikelihood", "LoglikelihoodRequest",
           "MultipleChoiceTask", "Prepared", "Record", "Sample", "Task", "TaskResult", "register_task", "__version__"]
