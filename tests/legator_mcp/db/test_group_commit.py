"""GroupCommit: items that queue up during a write share the next write; errors reach every caller of a batch."""

import anyio
import anyio.lowlevel
import pytest

from legator_mcp.db.group_commit import GroupCommit

pytestmark = pytest.mark.anyio


class _Writer:
    """Records each batch; the first write blocks until released, so later callers pile up behind it."""

    def __init__(self) -> None:
        self.batches: list[dict[str, int]] = []
        self.release = anyio.Event()
        self.entered = anyio.Event()
        self.fail_with: Exception | None = None

    async def write(self, items: dict[str, int]) -> dict[str, int]:
        self.batches.append(dict(items))
        if len(self.batches) == 1:
            self.entered.set()
            await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return {key: value * 10 for key, value in items.items() if key != "skip"}


async def test_items_arriving_during_a_write_share_the_next_batch() -> None:
    writer = _Writer()
    group = GroupCommit[str, int, int](writer.write)
    results: dict[str, int | None] = {}

    async def submit(key: str, value: int) -> None:
        results[key] = await group.submit(key, value)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "a", 1)
            await writer.entered.wait()
            for key, value in (("b", 2), ("c", 3), ("skip", 4)):
                tg.start_soon(submit, key, value)
            await anyio.wait_all_tasks_blocked()
            writer.release.set()

    assert writer.batches == [{"a": 1}, {"b": 2, "c": 3, "skip": 4}]
    assert results == {"a": 10, "b": 20, "c": 30, "skip": None}


async def test_a_later_item_for_the_same_key_replaces_the_earlier_one_in_a_batch() -> None:
    writer = _Writer()
    group = GroupCommit[str, int, int](writer.write)
    results: list[int | None] = []

    async def submit(key: str, value: int) -> None:
        results.append(await group.submit(key, value))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "first", 0)
            await writer.entered.wait()
            tg.start_soon(submit, "x", 1)
            tg.start_soon(submit, "x", 2)
            await anyio.wait_all_tasks_blocked()
            writer.release.set()

    assert writer.batches[1] == {"x": 2}
    assert sorted(r for r in results if r is not None) == [0, 20, 20]


async def test_a_failed_batch_raises_in_every_caller_of_that_batch_and_the_next_batch_still_runs() -> None:
    writer = _Writer()
    group = GroupCommit[str, int, int](writer.write)
    errors: list[str] = []

    async def submit(key: str) -> None:
        try:
            await group.submit(key, 1)
        except RuntimeError as exc:
            errors.append(f"{key}:{exc}")

    writer.fail_with = RuntimeError("disk full")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "a")
            await writer.entered.wait()
            tg.start_soon(submit, "b")
            tg.start_soon(submit, "c")
            await anyio.wait_all_tasks_blocked()
            writer.release.set()
    assert sorted(errors) == ["a:disk full", "b:disk full", "c:disk full"]

    writer.fail_with = None
    assert await group.submit("d", 4) == 40


async def test_a_caller_cancelled_mid_write_does_not_abandon_the_batch() -> None:
    writer = _Writer()
    group = GroupCommit[str, int, int](writer.write)
    scopes: list[anyio.CancelScope] = []
    survivor: list[int | None] = []

    async def leaving() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await group.submit("a", 1)

    async def staying() -> None:
        survivor.append(await group.submit("b", 2))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leaving)
            await writer.entered.wait()
            tg.start_soon(staying)
            await anyio.wait_all_tasks_blocked()
            scopes[0].cancel()  # the writer's caller goes away while its batch is being written
            await anyio.wait_all_tasks_blocked()
            writer.release.set()
    assert writer.batches == [{"a": 1}, {"b": 2}]
    assert survivor == [20]


@pytest.mark.parametrize("count", [1, 50])
async def test_every_submission_is_written_exactly_once(count: int) -> None:
    seen: list[str] = []

    async def write(items: dict[str, int]) -> dict[str, int]:
        seen.extend(items)
        await anyio.lowlevel.checkpoint()
        return dict(items)

    group = GroupCommit[str, int, int](write)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(group.submit, f"k{i}", i)
    assert sorted(seen) == sorted(f"k{i}" for i in range(count))
