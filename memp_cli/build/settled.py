"""Which stored runs distill's plan settles without their content (:mod:`memp_cli.build.runner`).

A run is *settled* when the plan will not build it whatever its task and steps: its memory is
forgotten (in the trash, or deleted by hand), it is left out by ``only_success`` (a failed run,
or one of unknown outcome), or its memory is current (built with this policy, model and prompt
version as the index saw it, and its file unchanged since). The plan then needs only the run's
id and outcome, which the trajectory ledger (:mod:`memp_cli.store.ledger`) has: a segment of
settled runs is not parsed. Anything else (a memory the index does not know, edited or broken,
built with another model...) is not settled, and its segment is read as before.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from memp_cli.build.policies import POLICIES, memory_id, needs_rebuild
from memp_cli.index.built import Built, BuiltWith
from memp_cli.store.ledger import MID_HEX, Kept

OWN_CACHE = 1 << 18  # ids remembered at most (a segment's worth, about 30 MB)
Stamps = Mapping[str, tuple[int, int]]


class Settled:
    def __init__(
        self,
        policy: str,
        model: str,
        prompt_version: str,
        only_success: bool,
        existing: Collection[str],
        gone: Collection[str],
        known: Built,
        stamps: Stamps,
    ) -> None:
        self.policy, self.model, self.prompt_version = policy, model, prompt_version
        self.only_success = only_success
        self.existing, self.gone, self.known, self.stamps = existing, gone, known, stamps
        self.others = [p for p in POLICIES if p != policy]
        self._own: dict[str, str] = {}  # run -> its memory id under this policy (a sha256 each)
        self._currents: set[str] | None = None
        # Runs :meth:`segment` settled without yielding them, by what the plan would count.
        self.skipped = self.filtered = self.unlabeled = 0

    def own(self, tid: str) -> str:
        """``memory_id(policy, tid)``, remembered: the plan asks it of a run up to four times."""
        mid = self._own.get(tid)
        if mid is None:
            if len(self._own) >= OWN_CACHE:
                self._own.clear()
            mid = self._own[tid] = memory_id(self.policy, tid)
        return mid

    def memory_of(self, tid: str) -> str:
        """The run's memory: one per run, whatever the policy. A memory of it built with
        another policy (an older store may hold one per policy; this policy's id is preferred)
        is the one to keep (it gets a new version)."""
        own = self.own(tid)
        if own in self.existing or own in self.gone:
            return own
        for p in self.others:
            mid = memory_id(p, tid)
            if mid in self.existing or mid in self.gone:
                return mid
        return own

    def current(self, tid: str) -> bool:
        """The run's memory under this policy is built, current and unchanged (the index says)."""
        return self._current(self.own(tid))

    def _current(self, mid: str) -> bool:
        k = self.known.get(mid)
        if k is None or mid in self.gone or mid not in self.existing or self.stamps.get(mid) != k[:2]:
            return False
        return not needs_rebuild(k[2], self.policy, self.model, self.prompt_version)

    def currents(self) -> set[str]:
        """Every memory :meth:`_current` calls current, found once: the index's stats compared
        with the files' as arrays, with :func:`needs_rebuild` asked once per distinct build key."""
        if self._currents is None:

            def stale(built: BuiltWith) -> bool:
                return needs_rebuild(built, self.policy, self.model, self.prompt_version)

            out = set(self.known.unchanged(self.stamps, stale))
            out.difference_update(self.gone)
            self._currents = out
        return self._currents

    def __call__(self, tid: str, success: bool | None) -> bool:
        """Whether the plan builds nothing of this run, whatever its content."""
        if self.only_success and success is not True:
            return True  # filtered, or (already built) skipped, kept or forgotten
        mid = self.memory_of(tid)
        return mid in self.gone or self._current(mid)

    def hashes(self, ids: list[str], policy: str) -> str:
        """The runs' memory ids under ``policy``, without their "m", joined: what the ledger
        keeps of a segment (:class:`memp_cli.store.ledger.Entry`)."""
        return "".join(memory_id(policy, tid)[1:] for tid in ids)

    def segment(self, ids: list[str], codes: str, kept: Kept | None = None) -> list[int] | None:
        """A segment of the ledger at once: None when a run of it is not settled (the plan
        parses it). Else the positions of the runs the plan must still see (as outlines); the
        others are counted here as the plan would count them: its memory current under this
        policy (:meth:`current`: skipped), or left out by ``only_success`` with no memory of it
        under any policy, in the trash or not (filtered, and unlabeled for an unknown outcome).
        ``kept(policy)``: :meth:`hashes` of ``ids`` (the ledger's), else each run is hashed here."""
        currents, policy, others = self.currents(), self.policy, self.others
        existing, gone, only_success = self.existing, self.gone, self.only_success
        if kept is not None:
            hashes = kept(policy)
            mids = ["m" + hashes[k : k + MID_HEX] for k in range(0, len(ids) * MID_HEX, MID_HEX)]
        else:
            mids = [memory_id(policy, tid) for tid in ids]
        if len(mids) != len(ids) or len(codes) != len(ids):
            raise ValueError("a ledger entry's ids, codes and memory ids differ in length")
        # Most runs of a settled segment have a current memory: the others, one by one.
        rest = [i for i, mid in enumerate(mids) if mid not in currents]
        out: list[int] = []
        skipped, filtered, unlabeled = len(ids) - len(rest), 0, 0
        other: list[str] | None = None  # the runs' memory ids under the other policies
        for i in rest:
            tid, code, mid = ids[i], codes[i], mids[i]
            if only_success and code != "s":
                if mid not in existing and mid not in gone:
                    if other is None:
                        other = [kept(p) for p in others] if kept is not None else []
                    if other:
                        theirs = ["m" + h[i * MID_HEX : (i + 1) * MID_HEX] for h in other]
                    else:
                        theirs = [memory_id(p, tid) for p in others]
                    if not any(m in existing or m in gone for m in theirs):
                        filtered += 1
                        unlabeled += code == "u"
                        continue
                out.append(i)
            elif self(tid, True if code == "s" else False if code == "f" else None):
                out.append(i)
            else:
                return None
        self.skipped += skipped
        self.filtered += filtered
        self.unlabeled += unlabeled
        return out
