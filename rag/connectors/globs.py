"""Glob patterns on '/'-separated relative paths: `*` and `?` stay within one segment,
`**` spans segments (`**/*.md` matches `a.md` and `x/y/a.md`).

Hand-written, not translated to a regex: patterns come from tenants' source configs, and a
backtracking regex (Python's `re`, and every glob library built on it: fnmatch, wcmatch) takes
time polynomial in the path with the number of stars as the exponent for `*a*a*a…b` against
`aaaa…`. Here the pattern is an automaton simulated on all its states at once (the set of states
is the bits of an int), so matching costs one step per character of the path whatever the pattern,
and steps already computed are kept per pattern (a lazily built DFA, bounded in size). The
semantics are those of the regex translation this replaced: `**/` is `(?:.*/)?`, `**` is `.*`,
`*` is `[^/]*`, `?` is `[^/]`, anything else is itself, and the whole path must match; except that
`.` now matches a newline too (without re.S it did not, so `secret/**` failed to exclude a file
named "a\nb" in secret/).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

__all__ = ["Glob", "compile_glob", "matches"]

# Pattern elements. _STAR, _ANY and _DIRS match runs, and may match nothing.
_LITERAL, _ONE, _STAR, _ANY, _DIRS = range(5)  # c, ?, *, **, **/
_RUNS = frozenset({_STAR, _ANY, _DIRS})
_MAX_CACHED_STEPS = 4096


def _merged(previous: int, new: int) -> int | None:
    """One element matching what two adjacent run elements match together, if there is one."""
    if _ANY in (previous, new):
        return _ANY  # .*[^/]*, .*(?:.*/)?, [^/]*.*, (?:.*/)?.* are all .*
    if previous == new:
        return previous  # [^/]*[^/]* is [^/]*, (?:.*/)?(?:.*/)? is (?:.*/)?
    if previous == _DIRS and new == _STAR:
        return _ANY  # (?:.*/)?[^/]* is any string: up to its last '/', then the rest
    return None  # [^/]*(?:.*/)? stays two elements


def _elements(pattern: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            element, i = (_DIRS, ""), i + 3
        elif pattern.startswith("**", i):
            element, i = (_ANY, ""), i + 2
        elif pattern[i] == "*":
            element, i = (_STAR, ""), i + 1
        elif pattern[i] == "?":
            element, i = (_ONE, ""), i + 1
        else:
            element, i = (_LITERAL, pattern[i]), i + 1
        # Adjacent runs are merged so that a state reaches the next by at most a few empty matches.
        while element[0] in _RUNS and out and out[-1][0] in _RUNS:
            kind = _merged(out[-1][0], element[0])
            if kind is None:
                break
            out.pop()
            element = (kind, "")
        out.append(element)
    return out


class Glob:
    """A compiled pattern. State k of the automaton means "the elements of states 0..k-1 matched";
    `**/` takes three: an entry that either skips the whole group or starts its run of anything,
    the run, then '/' (skipping from inside the run would forget what the run consumed)."""

    __slots__ = ("_accept", "_any_char", "_literal", "_non_slash_run", "_one", "_skip_one", "_skip_three",
                 "_start", "_steps", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._literal: dict[str, int] = {}  # char -> states that consume exactly that char
        self._one = 0  # states that consume one char other than '/'
        self._non_slash_run = 0  # states that stay on a char other than '/' (`*`)
        self._any_char = 0  # states that stay on any char (`**`, the run of `**/`)
        self._skip_one = 0  # states that may go on to the next without a char: runs, `**/`'s entry
        self._skip_three = 0  # `**/`'s entry: skips the group
        state = 0
        for kind, char in _elements(pattern):
            bit = 1 << state
            if kind == _LITERAL:
                self._literal[char] = self._literal.get(char, 0) | bit
            elif kind == _ONE:
                self._one |= bit
            elif kind == _STAR:
                self._non_slash_run |= bit
                self._skip_one |= bit
            else:
                if kind == _DIRS:  # entry, then the run and the '/'
                    self._skip_one |= bit
                    self._skip_three |= bit
                    state += 1
                    bit = 1 << state
                self._any_char |= bit
                self._skip_one |= bit
                if kind == _DIRS:
                    state += 1
                    self._literal["/"] = self._literal.get("/", 0) | (1 << state)
            state += 1
        self._accept = 1 << state
        self._start = self._closure(1)
        self._steps: dict[tuple[int, str], int] = {}

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"

    def match(self, path: str) -> bool:
        """Does the whole of `path` match? Time linear in len(path)."""
        states, steps = self._start, self._steps
        for char in path:
            key = (states, char)
            following = steps.get(key)
            if following is None:
                following = self._step(states, char)
                if len(steps) >= _MAX_CACHED_STEPS:
                    steps.clear()
                steps[key] = following
            states = following
            if not states:
                return False
        return bool(states & self._accept)

    def _step(self, states: int, char: str) -> int:
        consume = self._literal.get(char, 0)
        stay = self._any_char
        if char != "/":
            consume |= self._one
            stay |= self._non_slash_run
        return self._closure(((states & consume) << 1) | (states & stay))

    def _closure(self, states: int) -> int:
        """`states` and every state they reach by empty matches (a few rounds: runs are merged)."""
        while True:
            reached = states | ((states & self._skip_one) << 1) | ((states & self._skip_three) << 3)
            if reached == states:
                return states
            states = reached


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> Glob:
    return Glob(pattern)


def matches(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(compile_glob(p).match(path) for p in include):
        return False
    return not any(compile_glob(p).match(path) for p in exclude)
