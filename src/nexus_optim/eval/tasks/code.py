"""Code completion checked by execution: the model writes a function body, tests run it.

Each problem is a prompt (signature + docstring, sometimes the start of the body), a reference
completion and a few ``assert`` lines. The greedy completion is cut where the function ends
(the first non-blank line that is not indented), and ``prompt + completion + tests`` runs in a
fresh ``python -I`` process, sandboxed by ``sandbox.run_python``: a private temp dir, no
network, no new processes, writes confined to that dir, CPU / memory / file-size limits, output
to files, and a wall-clock timeout that kills everything the program started. Never in-process.
pass@1 = fraction of problems whose program exits with status 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nexus_optim.eval.tasks.base import TaskContext
from nexus_optim.eval.tasks.sandbox import run_python

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#")


@dataclass(frozen=True)
class CodeProblem:
    name: str
    prompt: str
    solution: str  # a reference completion (prompt + solution passes the tests)
    tests: str


def _p(name: str, sig: str, doc: str, body_start: str, solution: str, tests: list[str]) -> CodeProblem:
    prompt = f"def {name}{sig}:\n    \"\"\"{doc}\"\"\"\n{body_start}"
    return CodeProblem(name, prompt, solution, "\n".join(tests))


PROBLEMS: list[CodeProblem] = [
    _p("add", "(a, b)", "Return the sum of a and b.", "    return", " a + b\n",
       ["assert add(2, 3) == 5", "assert add(-4, 4) == 0", "assert add(10, 32) == 42"]),
    _p("sub", "(a, b)", "Return a minus b.", "    return", " a - b\n",
       ["assert sub(5, 3) == 2", "assert sub(0, 7) == -7"]),
    _p("mul", "(a, b)", "Return the product of a and b.", "    return", " a * b\n",
       ["assert mul(6, 7) == 42", "assert mul(-2, 3) == -6", "assert mul(0, 9) == 0"]),
    _p("square", "(x)", "Return x squared.", "    return", " x * x\n",
       ["assert square(3) == 9", "assert square(-4) == 16"]),
    _p("is_even", "(n)", "Return True if n is even, else False.", "    return", " n % 2 == 0\n",
       ["assert is_even(4) is True", "assert is_even(7) is False", "assert is_even(0) is True"]),
    _p("maximum", "(a, b)", "Return the larger of a and b.", "    return", " a if a > b else b\n",
       ["assert maximum(3, 9) == 9", "assert maximum(9, 3) == 9", "assert maximum(-1, -5) == -1"]),
    _p("absolute", "(x)", "Return the absolute value of x without using abs().", "    if x < 0:\n        return",
       " -x\n    return x\n",
       ["assert absolute(-3) == 3", "assert absolute(5) == 5", "assert absolute(0) == 0"]),
    _p("first", "(items)", "Return the first element of the list items.", "    return", " items[0]\n",
       ["assert first([7, 8, 9]) == 7", "assert first(['a']) == 'a'"]),
    _p("last", "(items)", "Return the last element of the list items.", "    return", " items[-1]\n",
       ["assert last([7, 8, 9]) == 9", "assert last(['a', 'b']) == 'b'"]),
    _p("total", "(numbers)", "Return the sum of a list of numbers.", "    s = 0\n    for n in numbers:\n",
       "        s += n\n    return s\n",
       ["assert total([1, 2, 3]) == 6", "assert total([]) == 0", "assert total([-1, 1]) == 0"]),
    _p("count_positive", "(numbers)", "Return how many numbers in the list are greater than zero.", "    return",
       " sum(1 for n in numbers if n > 0)\n",
       ["assert count_positive([1, -2, 3, 0]) == 2", "assert count_positive([]) == 0"]),
    _p("reverse_string", "(s)", "Return the string s reversed.", "    return", " s[::-1]\n",
       ["assert reverse_string('abc') == 'cba'", "assert reverse_string('') == ''"]),
    _p("length", "(s)", "Return the number of characters in s.", "    return", " len(s)\n",
       ["assert length('hello') == 5", "assert length('') == 0"]),
    _p("to_upper", "(s)", "Return s in upper case.", "    return", " s.upper()\n",
       ["assert to_upper('abc') == 'ABC'", "assert to_upper('A1b') == 'A1B'"]),
    _p("double_all", "(numbers)", "Return a new list with every number doubled.", "    return",
       " [2 * n for n in numbers]\n",
       ["assert double_all([1, 2, 3]) == [2, 4, 6]", "assert double_all([]) == []"]),
    _p("keep_even", "(numbers)", "Return the even numbers of the list, in order.", "    return",
       " [n for n in numbers if n % 2 == 0]\n",
       ["assert keep_even([1, 2, 3, 4]) == [2, 4]", "assert keep_even([1, 3]) == []"]),
    _p("factorial", "(n)", "Return n! for n >= 0.", "    result = 1\n    for i in range(2, n + 1):\n",
       "        result *= i\n    return result\n",
       ["assert factorial(0) == 1", "assert factorial(5) == 120", "assert factorial(1) == 1"]),
    _p("fib", "(n)", "Return the n-th Fibonacci number, fib(0) = 0 and fib(1) = 1.", "    a, b = 0, 1\n    for _ in range(n):\n",
       "        a, b = b, a + b\n    return a\n",
       ["assert fib(0) == 0", "assert fib(1) == 1", "assert fib(10) == 55"]),
    _p("mean", "(numbers)", "Return the arithmetic mean of a non-empty list of numbers.", "    return",
       " sum(numbers) / len(numbers)\n",
       ["assert mean([1, 2, 3]) == 2", "assert mean([5]) == 5", "assert mean([1, 2]) == 1.5"]),
    _p("is_palindrome", "(s)", "Return True if s reads the same forwards and backwards.", "    return",
       " s == s[::-1]\n",
       ["assert is_palindrome('abba') is True", "assert is_palindrome('abc') is False",
        "assert is_palindrome('') is True"]),
    _p("count_char", "(s, c)", "Return how many times the character c occurs in s.", "    return", " s.count(c)\n",
       ["assert count_char('banana', 'a') == 3", "assert count_char('xyz', 'a') == 0"]),
    _p("clamp", "(x, lo, hi)", "Return x limited to the range [lo, hi].", "    return", " max(lo, min(x, hi))\n",
       ["assert clamp(5, 0, 10) == 5", "assert clamp(-3, 0, 10) == 0", "assert clamp(12, 0, 10) == 10"]),
    _p("join_words", "(words)", "Return the words joined by single spaces.", "    return", " ' '.join(words)\n",
       ["assert join_words(['a', 'b', 'c']) == 'a b c'", "assert join_words([]) == ''"]),
    _p("max_of_list", "(numbers)", "Return the largest number of a non-empty list without using max().",
       "    best = numbers[0]\n    for n in numbers:\n",
       "        if n > best:\n            best = n\n    return best\n",
       ["assert max_of_list([3, 9, 2]) == 9", "assert max_of_list([-5, -2]) == -2", "assert max_of_list([4]) == 4"]),
]


@dataclass
class CheckResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    stderr: str  # the last 500 characters


def check_program(program: str, timeout: float = 5.0, memory_mb: int = 1024) -> CheckResult:
    """Run ``program`` in the sandbox (``sandbox.run_python``: fresh ``python -I`` in a private
    temp dir, no network, no new processes, writes confined to that dir, output to files).

    Passed iff it exits with status 0 within ``timeout`` seconds of wall time; on timeout the
    whole process group (and, with namespaces, every process the program left) is killed, and
    this returns within ``timeout + sandbox.KILL_MARGIN`` seconds.
    """
    r = run_python(program, timeout=timeout, memory_mb=memory_mb)
    if r.status == "timeout":
        return CheckResult(False, "timeout", None, r.stderr[-500:])
    rc = r.returncode
    return CheckResult(rc == 0, "passed" if rc == 0 else "failed", rc, r.stderr[-500:])


def truncate_body(completion: str, at_line_start: bool = False) -> str:
    """The completion up to where the function ends: the first non-blank line that starts at
    column 0. Unless ``at_line_start`` (the prompt ended with a newline), the completion's first
    line continues the prompt's last line and is always kept."""
    lines = completion.split("\n")
    keep = [] if at_line_start else [lines[0]]
    for line in lines if at_line_start else lines[1:]:
        if line.strip() and not line[0].isspace():
            break
        keep.append(line)
    return "\n".join(keep)


def program_for(problem: CodeProblem, completion: str) -> str:
    body = truncate_body(completion, at_line_start=problem.prompt.endswith("\n"))
    return f"{problem.prompt}{body}\n\n\n{problem.tests}\n"


def check_completions(problems: Sequence[CodeProblem], completions: Sequence[str], timeout: float = 5.0,
                      workers: int = 2) -> list[CheckResult]:
    """Check each completion in its own subprocess (``workers`` at a time)."""
    if len(problems) != len(completions):
        raise ValueError(f"code: {len(problems)} problems but {len(completions)} completions")
    programs = [program_for(p, c) for p, c in zip(problems, completions)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        return list(ex.map(lambda prog: check_program(prog, timeout), programs))


def score(problems: Sequence[CodeProblem], completions: Sequence[str], timeout: float = 5.0,
          workers: int = 2, log_samples: bool = False) -> dict:
    results = check_completions(problems, completions, timeout, workers)
    n = len(results)
    out = {"n": n, "passed": sum(r.passed for r in results),
           "pass@1": sum(r.passed for r in results) / n if n else float("nan"),
           "timeouts": sum(r.status == "timeout" for r in results)}
    if log_samples:
        out["samples"] = [{"name": p.name, "completion": c, "status": r.status, "stderr": r.stderr[-200:]}
                          for p, c, r in zip(problems, completions, results)]
    return out


def run(ctx: TaskContext, limit: int | None = None, generate=None,
        problems: Sequence[CodeProblem] | None = None) -> dict:
    opts = {"max_new_tokens": 96, "timeout": 5.0, "workers": 2, **ctx.options.get("code", {})}
    problems = list(problems if problems is not None else PROBLEMS)[:limit or None]
    gen = generate or ctx.generate
    completions = gen([p.prompt for p in problems], opts["max_new_tokens"], STOP)
    return score(problems, completions, opts["timeout"], opts["workers"], ctx.log_samples)
