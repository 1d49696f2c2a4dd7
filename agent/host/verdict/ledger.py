"""The ledger: what the scenario asked for and did, so checks judge against the request.

Concepts owned here:
- The *expected set*.  Live vectors are index 0 (the driver's static vector, group 0)
  plus the indices of every live group, as the allocation replies gave them; the ledger
  never learns them from a read-out, so a read-out that omits a vector cannot shrink
  what is judged.
- *Requests*.  Each live group keeps what was asked (min, max, explicit start, CPU), so
  "C is [60, 61, 62]" and "B's vectors target CPU 1" are judged against the request.
- *Counts*.  For every index: how many raises the device saw (device or doorbell), how
  many it should have delivered, whether it should hold one pending, and how many
  interrupts the guest vector now owning the index should have counted.  A raise of an
  index whose device entry can deliver (an eventfd, MSI-X not function-masked) is
  delivered; otherwise it is held pending, once, and delivered when the index gets an
  eventfd or the function mask clears; held for a live vector, it is *owed* to that
  vector (``owed``) until the device delivers it.  A raise QEMU holds behind its own
  mask (a freed index still holding its eventfd) reaches the index's next owner exactly
  once.
- *Shut-down vectors*.  A live vector the kernel shut down (a managed vector whose CPUs
  all went offline) keeps its index but its entry is masked in QEMU's table; a raise
  the device delivers meanwhile is held by QEMU (coalesced, as for a freed index) and
  counted once when the kernel starts the vector again.
- *Device bookkeeping*.  The doorbell raises made (the device's IRQ_TOTAL register) and
  the index of the last one (its LAST_VECTOR register); PENDING_COUNT is the number of
  indices held pending.
- Pure data and arithmetic: no I/O, deterministic, unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


class LedgerError(ValueError):
    """The scenario asked the ledger for something impossible (a bug in the scenario)."""


@dataclass(frozen=True)
class GroupRequest:
    """One live group as the scenario asked for it and the driver gave it: its ``label``,
    group id, the allocated ``indices``, and the request (``min``, ``max``, explicit
    ``start``, ``cpu``, ``managed``)."""
    label: str
    group: int
    indices: tuple[int, ...]
    min: int
    max: int
    start: int | None = None
    cpu: int | None = None
    managed: bool = False


@dataclass
class IndexAccount:
    """What should have happened at one table index (see the field comments)."""
    raised: int = 0          # raises the device saw for the index (whole run)
    delivered: int = 0       # eventfd writes the device should have made
    pending: bool = False    # the device should hold one raise pending (PBA bit set)
    qemu_held: bool = False  # QEMU holds one behind its mask for the next owner
    counted: int = 0         # interrupts the current owner's handler should have counted


@dataclass
class Ledger:
    """What the scenario asked for and did, and so what every view should show: the live
    groups by id, one ``IndexAccount`` per table index, the function mask, retired group ids,
    vectors moved by set_affinity, doorbell raises and vectors the kernel shut down.  Group
    0 (index 0, the driver's static vector) is always live.  Methods that record an action
    raise ``LedgerError`` for one that makes no sense (a scenario bug)."""
    table_size: int
    cpus: int
    groups: dict[int, GroupRequest] = field(default_factory=dict)
    accounts: dict[int, IndexAccount] = field(default_factory=dict)
    function_masked: bool = False
    retired_ids: set[int] = field(default_factory=set)
    moved: dict[int, int] = field(default_factory=dict)   # index -> CPU it was moved to
    doorbell_raises: int = 0   # what the device's IRQ_TOTAL register counts
    last_doorbell: int = 0     # what its LAST_VECTOR register holds (0 until a doorbell)
    shut: set[int] = field(default_factory=set)   # live indices the kernel shut down

    def __post_init__(self) -> None:
        self.accounts = {i: IndexAccount() for i in range(self.table_size)}
        self.groups.setdefault(0, GroupRequest("static", 0, (0,), 1, 1))

    # --- the expected set ----------------------------------------------------------------
    def live(self) -> set[int]:
        """Index 0 and every live group's indices."""
        return {i for group in self.groups.values() for i in group.indices}

    def owner(self, index: int) -> GroupRequest | None:
        """The live group holding ``index``, or ``None``."""
        for group in self.groups.values():
            if index in group.indices:
                return group
        return None

    def dynamic_groups(self) -> list[GroupRequest]:
        """The live groups other than the static group 0, by id."""
        return [g for gid, g in sorted(self.groups.items()) if gid != 0]

    # --- allocation and free ------------------------------------------------------------
    def allocated(self, request: GroupRequest) -> None:
        """A group was allocated: its vectors are new owners of its indices; a raise held
        for an index (by the device or by QEMU) reaches the new owner once."""
        overlap = self.live() & set(request.indices)
        if overlap:
            raise LedgerError(f"group {request.label} got live indices {sorted(overlap)}")
        self.groups[request.group] = request
        for index in request.indices:
            self.moved.pop(index, None)
            account = self.accounts[index]
            account.counted = 0
            if account.qemu_held:
                account.qemu_held = False
                account.counted = 1
            if account.pending and not self.function_masked:
                account.pending = False
                account.delivered += 1
                account.counted += 1

    def freed(self, group: int) -> GroupRequest:
        """Record that ``group`` was freed and return its request; its id is retired.
        ``LedgerError`` for group 0 or a group that is not live."""
        request = self.groups.pop(group, None)
        if request is None or group == 0:
            raise LedgerError(f"group {group} is not a live dynamic group")
        self.shut -= set(request.indices)
        self.retired_ids.add(group)
        return request

    # --- raises -----------------------------------------------------------------------
    def raised(self, index: int, *, has_eventfd: bool, doorbell: bool = False) -> None:
        """The device saw a raise of ``index`` (from the control socket, or from the
        guest's ICS ``doorbell``); ``has_eventfd`` is whether the device held an eventfd
        for it at that moment."""
        if not 0 <= index < self.table_size:
            raise LedgerError(f"index {index} is outside the {self.table_size}-entry table")
        self.doorbell_raises += doorbell
        if doorbell:
            self.last_doorbell = index
        account = self.accounts[index]
        account.raised += 1
        if has_eventfd and not self.function_masked:
            account.delivered += 1
            if index in self.live() and index not in self.shut:
                account.counted += 1
            else:
                account.qemu_held = True     # QEMU holds it behind the freed entry's mask
        else:
            account.pending = True           # coalesces with a raise already pending

    def owed(self) -> set[int]:
        """The live indices whose raise the device holds pending: owed to the vector's
        handler, once, when the device delivers it (an unmask, an eventfd, MASKALL clear)."""
        return {i for i in self.live() if self.accounts[i].pending}

    def delivered_held(self, index: int) -> None:
        """The device delivered the raise it held for live ``index``: counted once."""
        if index not in self.owed():
            raise LedgerError(f"index {index} has no held raise owed to a live vector")
        account = self.accounts[index]
        account.pending = False
        account.delivered += 1
        account.counted += 1

    def registers_reset(self) -> None:
        """The device's registers went back to their reset values (DEVICE_RESET, a function
        reset, CTRL.RST): LAST_VECTOR reads 0 again until the next doorbell raise."""
        self.last_doorbell = 0

    def function_mask(self, masked: bool) -> None:
        """The function mask was set or cleared; clearing delivers what was held."""
        self.function_masked = masked
        if masked:
            return
        for index, account in self.accounts.items():
            if account.pending and index in self.live():
                account.pending = False
                account.delivered += 1
                account.counted += 1

    def function_reset(self, qemu_table_reset: bool) -> None:
        """The function was reset (FLR, or QEMU's DEVICE_RESET on a bus reset): the device's
        PBA is clear, so every raise it held is discarded, never delivered; a reset that
        also reset QEMU's emulated table (``qemu_table_reset``) discarded what QEMU held
        behind its masks too.  The kernel's restore then leaves the function unmasked.
        The device's registers are back at their reset values too (LAST_VECTOR 0)."""
        self.registers_reset()
        for account in self.accounts.values():
            account.pending = False
            if qemu_table_reset:
                account.qemu_held = False
        self.function_masked = False

    def msix_restored(self) -> None:
        """The kernel restored MSI-X after a reset: a raise the device held for a live
        vector since the reset arrives once (as when the function mask is cleared)."""
        self.function_mask(False)

    def shut_down(self, indices: Iterable[int]) -> None:
        """The kernel shut these live vectors down (their QEMU entries masked)."""
        indices = set(indices)
        if indices - self.live():
            raise LedgerError(f"indices {sorted(indices - self.live())} are not live")
        self.shut |= indices

    def started(self, indices: Iterable[int]) -> None:
        """The kernel started these shut-down vectors again: what QEMU held arrives once."""
        for index in set(indices):
            if index not in self.shut:
                raise LedgerError(f"index {index} was not shut down")
            self.shut.discard(index)
            account = self.accounts[index]
            if account.qemu_held:
                account.qemu_held = False
                account.counted += 1

    def unmasked_in_qemu(self) -> set[int]:
        """The entries QEMU's table should have unmasked: live and not shut down."""
        return self.live() - self.shut

    # --- expectations ---------------------------------------------------------------------
    def expected_counts(self) -> dict[int, int]:
        """For every live index, the interrupts its owner's handler should have counted."""
        return {i: self.accounts[i].counted for i in sorted(self.live())}

    def expected_pending(self) -> set[int]:
        """The indices whose PBA bit the device should have set."""
        return {i for i, a in self.accounts.items() if a.pending}

    def expected_device(self) -> dict[int, tuple[int, int, bool]]:
        """index -> (raised, delivered, pending) for every index of the table."""
        return {i: (a.raised, a.delivered, a.pending) for i, a in self.accounts.items()}

    def total_raised(self) -> int:
        """All raises the device saw, every index, the whole run."""
        return sum(a.raised for a in self.accounts.values())

    def retarget(self, index: int, cpu: int) -> None:
        """The scenario moved ``index``'s vector to ``cpu`` (its smp_affinity)."""
        if index not in self.live():
            raise LedgerError(f"index {index} is not live: it cannot be moved")
        self.moved[index] = cpu

    def requested_cpus(self, index: int) -> tuple[int, ...] | None:
        """The CPUs the scenario asked ``index``'s vector to run on, or None if it asked
        for nothing in particular."""
        if index in self.moved and index in self.live():
            return (self.moved[index],)
        owner = self.owner(index)
        if owner is None or owner.cpu is None:
            return None
        return (owner.cpu,)

    def ids_in_use(self) -> set[int]:
        """The ids of the live groups (0 included)."""
        return set(self.groups)

    def indices_of(self, labels: Iterable[str]) -> list[int]:
        """The indices of the live groups with one of ``labels``, sorted."""
        wanted = set(labels)
        return sorted(i for g in self.groups.values() if g.label in wanted for i in g.indices)
