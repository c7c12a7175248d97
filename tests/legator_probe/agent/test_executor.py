"""The executor against real processes: streaming, exit codes, timeouts, cancel, caps, sanitising, policy."""

import os
from pathlib import Path

import anyio
import pytest
from tests.legator_probe.agent._support import (
    alive,
    command_message,
    run_command,
    running_executor,
    wait_gone,
)

from legator_probe.protocol.sanitize import REDACTED

pytestmark = pytest.mark.anyio


async def test_a_shell_argv_reports_output_and_exit_code() -> None:
    with anyio.fail_after(10):
        result = await run_command("shell", {"argv": ["printf", "one\\ntwo\\n"]})
    assert (result.status, result.exit_code, result.stdout, result.stderr) == ("ok", 0, "one\ntwo\n", "")
    assert result.stdout_bytes == 8
    assert result.truncated is False


async def test_a_script_with_a_nonzero_exit_is_an_error_carrying_the_exit_code() -> None:
    with anyio.fail_after(10):
        result = await run_command("shell", {"script": "echo out; echo err >&2; exit 3"})
    assert (result.status, result.exit_code, result.error_code) == ("error", 3, "nonzero_exit")
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


async def test_cwd_and_env_reach_the_program(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        result = await run_command(
            "shell", {"script": 'pwd; echo "$GREETING"', "cwd": str(tmp_path), "env": {"GREETING": "hi"}}
        )
    assert result.stdout == f"{tmp_path}\nhi\n"


async def test_a_missing_program_or_cwd_is_not_found(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        missing_program = await run_command("shell", {"argv": ["no-such-program-legator"]})
        missing_cwd = await run_command("shell", {"argv": ["true"], "cwd": str(tmp_path / "nope")})
    assert (missing_program.status, missing_program.error_code) == ("error", "not_found")
    assert (missing_cwd.status, missing_cwd.error_code) == ("error", "not_found")


async def test_streamed_chunks_are_ordered_and_precede_the_result() -> None:
    script = "for i in 1 2 3; do echo line$i; sleep 0.15; done; echo oops >&2"
    with anyio.fail_after(10):
        async with running_executor() as (executor, emitter):
            message = command_message("shell", {"script": script}, stream=True)
            executor.submit(message)
            result = await emitter.wait(message.payload.request_id)
    request_id = message.payload.request_id
    seqs = [chunk.seq for chunk in emitter.chunks]
    assert seqs == list(range(len(seqs))) and len(seqs) >= 3  # the sleeps force several timed flushes
    assert emitter.order[-1] == f"result:{request_id}"
    assert emitter.output(request_id) == result.stdout == "line1\nline2\nline3\n"
    assert emitter.output(request_id, "stderr") == result.stderr == "oops\n"


async def test_large_output_leaves_in_chunks_of_at_most_16_kib() -> None:
    with anyio.fail_after(10):
        async with running_executor() as (executor, emitter):
            message = command_message(
                "shell", {"script": "head -c 100000 /dev/zero | tr '\\0' a"}, stream=True, max_output_bytes=200_000
            )
            executor.submit(message)
            result = await emitter.wait(message.payload.request_id)
    sizes = [len(chunk.data) for chunk in emitter.chunks]
    assert sum(sizes) == 100_000 and max(sizes) <= 16 * 1024 and len(sizes) >= 7
    assert result.stdout_bytes == 100_000


async def test_output_over_the_cap_is_truncated_and_reports_the_full_size() -> None:
    with anyio.fail_after(10):
        result = await run_command(
            "shell", {"script": "head -c 50000 /dev/zero | tr '\\0' x; echo e >&2"}, max_output_bytes=1000
        )
    assert result.status == "ok"
    assert (len(result.stdout), result.stdout_bytes, result.stderr_bytes) == (1000, 50_000, 2)
    assert result.truncated is True


async def test_a_result_is_trimmed_to_fit_in_one_frame() -> None:
    with anyio.fail_after(10):
        async with running_executor(max_frame_bytes=128 * 1024) as (executor, emitter):
            message = command_message("shell", {"script": "head -c 100000 /dev/zero"}, max_output_bytes=1_000_000)
            executor.submit(message)
            result = await emitter.wait(message.payload.request_id)
    assert len(result.model_dump_json()) <= 64 * 1024
    assert (result.truncated, result.stdout_bytes) == (True, 100_000) and result.stdout.startswith("\x00")


async def test_secrets_are_sanitised_in_chunks_and_results() -> None:
    script = (
        "echo password=hunter2; echo 'Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345';"
        "echo '-----BEGIN PRIVATE KEY-----'; sleep 0.3; echo MIIEvQIBADANBgkqhkiG9w0BAQEFAASC; sleep 0.3;"
        "echo '-----END PRIVATE KEY-----'; echo after"
    )
    with anyio.fail_after(10):
        async with running_executor() as (executor, emitter):
            message = command_message("shell", {"script": script}, stream=True)
            executor.submit(message)
            result = await emitter.wait(message.payload.request_id)
    streamed = emitter.output(message.payload.request_id)
    for text in (streamed, result.stdout):
        assert "hunter2" not in text and "abcdefghijklmnop" not in text and "MIIEvQIBADAN" not in text
        assert REDACTED in text and "after" in text
    assert len(emitter.chunks) >= 3  # the key body travelled in a chunk of its own and was still hidden


async def test_timeout_kills_the_whole_process_group_including_a_grandchild_ignoring_sigterm() -> None:
    script = "(trap '' TERM; exec sleep 300) & echo $!; wait"
    with anyio.fail_after(10):
        async with running_executor(kill_grace_s=0.3) as (executor, emitter):
            message = command_message("shell", {"script": script}, timeout_s=0.5)
            executor.submit(message)
            result = await emitter.wait(message.payload.request_id)
        grandchild = int(result.stdout.strip())
        await wait_gone(grandchild)
    assert (result.status, result.error_code) == ("timeout", "timeout")
    assert not alive(grandchild)


async def test_cancel_stops_the_command_and_reports_canceled() -> None:
    with anyio.fail_after(10):
        async with running_executor() as (executor, emitter):
            message = command_message("shell", {"script": "echo started; sleep 300 & echo $!; wait"}, stream=True)
            request_id = message.payload.request_id
            executor.submit(message)
            await emitter.wait_output(request_id, "started\n")
            assert executor.running_count == 1
            assert executor.cancel(request_id) is True
            result = await emitter.wait(request_id)
            assert executor.cancel(request_id) is False
        await wait_gone(int(result.stdout.split()[1]))
    assert (result.status, result.error_code) == ("canceled", "canceled")


async def test_commands_over_the_concurrency_bound_are_busy_and_duplicates_refused() -> None:
    with anyio.fail_after(10):
        async with running_executor(max_concurrent=1) as (executor, emitter):
            first = command_message("shell", {"script": "echo up; exec sleep 300"}, stream=True, request_id="first")
            executor.submit(first)
            await emitter.wait_output("first", "up")
            duplicate = command_message("shell", {"argv": ["true"]}, request_id="first")
            executor.submit(duplicate)
            executor.submit(command_message("shell", {"argv": ["true"]}, request_id="second"))
            busy = await emitter.wait("second")
            executor.cancel("first")
            first_result = await emitter.wait("first")
    assert (busy.status, busy.error_code) == ("error", "busy")
    assert first_result.status == "canceled"  # the duplicate neither ran nor replaced the first result
    assert [(e.code, e.ref_id) for e in emitter.errors] == [("duplicate_request", duplicate.id)]


async def test_drain_lets_short_commands_finish_and_cancels_the_rest() -> None:
    with anyio.fail_after(10):
        async with running_executor() as (executor, emitter):
            quick = command_message("shell", {"script": "echo go; sleep 0.2; echo done"}, stream=True)
            slow = command_message("shell", {"script": "echo go; exec sleep 300"}, stream=True)
            executor.submit(quick)
            executor.submit(slow)
            await emitter.wait_output(slow.payload.request_id, "go")
            await executor.drain(1.0)
            assert executor.running_count == 0
            executor.submit(command_message("shell", {"argv": ["true"]}, request_id="late"))
            late = await emitter.wait("late")
    assert emitter.results[quick.payload.request_id].stdout == "go\ndone\n"
    assert emitter.results[slow.payload.request_id].status == "canceled"
    assert late.error_code == "shutting_down"


async def test_an_observe_probe_refuses_a_file_write_with_a_rejection_and_a_refused_result(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    with anyio.fail_after(10):
        async with running_executor(level="observe") as (executor, emitter):
            message = command_message("file_write", {"path": str(target), "content": "x"})
            executor.submit(message)
            result = await emitter.wait(message.payload.request_id)
    assert (result.status, result.error_code) == ("refused", "policy_refused")
    assert result.data is not None and result.data["required_level"] == "remediate"
    assert [(r.ref_id, r.reason) for r in emitter.rejections] == [(message.id, "policy")]
    assert not target.exists()


async def test_a_denied_path_is_refused_even_at_remediate(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t\n", encoding="utf-8")
    with anyio.fail_after(10):
        async with running_executor(path_deny=[str(tmp_path)]) as (executor, emitter):
            read = command_message("file_read", {"path": str(secret)})
            cat = command_message("shell", {"argv": ["cat", str(secret)]})
            executor.submit(read)
            executor.submit(cat)
            results = [await emitter.wait(m.payload.request_id) for m in (read, cat)]
    assert [r.error_code for r in results] == ["policy_refused", "policy_refused"]
    assert all("s3cr3t" not in r.stdout for r in results)


async def test_the_working_directory_default_is_used_for_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "note").write_text("hello\n", encoding="utf-8")
    with anyio.fail_after(10):
        result = await run_command("shell", {"argv": ["cat", "note"], "cwd": str(tmp_path)})
    assert result.stdout == "hello\n"
    assert os.getcwd() != str(tmp_path)
