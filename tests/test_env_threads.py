"""How many threads a process takes: what it may use (quota, affinity) less what others keep busy."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mi_tutor import env


def test_the_override_wins_and_a_bad_value_says_what_to_do(monkeypatch):
    monkeypatch.setenv(env.THREADS_ENV, "3")
    assert env.available_cores() == 3 and env.available_cores(limit=2) == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(env.THREADS_ENV, bad)
        with pytest.raises(ValueError, match="whole number of threads"):
            env.available_cores()


def test_free_cores_follow_what_other_processes_keep_busy(monkeypatch):
    monkeypatch.delenv(env.THREADS_ENV, raising=False)
    monkeypatch.setattr(env, "usable_cores", lambda: 4)
    for busy, free in ((0.1, 4), (1.2, 3), (2.6, 1), (3.9, 1), (7.0, 1)):
        monkeypatch.setattr(env, "_busy_cores", lambda s, b=busy: b)
        assert env.available_cores() == free, busy
    assert env.available_cores(limit=2) == 1
    monkeypatch.setattr(env, "usable_cores", lambda: 1)
    monkeypatch.setattr(env, "_busy_cores", lambda s: pytest.fail("a one-core process needs no sample"))
    assert env.available_cores() == 1


def test_without_proc_stat_the_load_average_is_used(monkeypatch):
    monkeypatch.delenv(env.THREADS_ENV, raising=False)
    monkeypatch.setattr(env, "usable_cores", lambda: 2)
    monkeypatch.setattr(env, "_busy_cores", lambda s: None)
    monkeypatch.setattr(env.os, "getloadavg", lambda: (1.3, 0.0, 0.0))
    assert env.available_cores() == 1
    monkeypatch.setattr(env.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert env.available_cores() == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_a_spinning_neighbour_is_seen_as_a_busy_core():
    quiet = env._busy_cores(0.5)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        busy = env._busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and quiet is not None
    assert busy >= 0.8, f"a spinning process kept only {busy:.2f} cores busy (before it: {quiet:.2f})"


@pytest.mark.skipif(not env._x86(), reason="the kernel pin is for x86")
def test_importing_mi_tutor_first_gives_torch_its_avx2_kernels_and_a_late_import_is_named():
    code = ("import os; os.environ.pop('ATEN_CPU_CAPABILITY', None); {first}\n"
            "import torch; torch.ones(2) + 1\nfrom mi_tutor import env\n"
            "print(torch.backends.cpu.get_cpu_capability(), env.cpu_kernels_note() is None)")
    first = subprocess.run([sys.executable, "-c", code.format(first="import mi_tutor")], capture_output=True, text=True)
    assert first.stdout.split() == ["AVX2", "True"], first.stderr[-500:]
    late = subprocess.run([sys.executable, "-c", code.format(first="")], capture_output=True, text=True)
    cap, quiet = late.stdout.split()
    if cap == "AVX2":  # a CPU without AVX-512: nothing to pin, nothing to say
        assert quiet == "True"
    else:
        assert quiet == "False"


@pytest.mark.skipif(not env._x86(), reason="the MKL pin is for x86")
def test_importing_mi_tutor_first_puts_mkl_on_its_reproducible_avx2_branch():
    # A least-squares solve and a matrix product through MKL. On an AVX-512 CPU, MKL's own choice gives
    # other last bits than its AVX2 branch; `import mi_tutor` must select the reproducible AVX2 branch.
    code = ("import os; os.environ.pop('MKL_CBWR', None); {first}\n"
            "import torch, hashlib; g = torch.Generator().manual_seed(0)\n"
            "x = torch.randn(400, 300, generator=g); a = x.T @ x + torch.eye(300); b = torch.randn(300, 7, generator=g)\n"
            "print(hashlib.sha1(torch.linalg.solve(a, b).numpy().tobytes() + (x @ a).numpy().tobytes()).hexdigest())")

    def digest(first: str) -> str:
        r = subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-500:]
        return r.stdout.strip()

    assert digest("import mi_tutor") == digest(f"os.environ['MKL_CBWR'] = {env.MKL_KERNELS!r}")
    assert os.environ.get("MKL_CBWR") == env.MKL_KERNELS == "AVX2,STRICT"   # the suite's own processes too (conftest)


@pytest.mark.skipif(not env._x86(), reason="the MKL pin is for x86")
def test_under_the_pin_a_product_that_sums_over_the_batch_does_not_depend_on_the_thread_count():
    # The weight gradient of notebook 01's training (5107 rows summed): MKL may split that sum between threads,
    # which STRICT forbids. This is what lets training use the cores it can get and print the same numbers.
    code = ("import mi_tutor, torch, hashlib; g = torch.Generator().manual_seed(0)\n"
            "x = torch.randn(5107, 512, generator=g); d = torch.randn(5107, 128, generator=g)\n"
            "out = []\n"
            "for t in (1, 2):\n"
            "    torch.set_num_threads(t); out.append(hashlib.sha1((d.T @ x).numpy().tobytes()).hexdigest())\n"
            "print(torch.get_num_threads(), out[0] == out[1])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["2", "True"], r.stdout + r.stderr[-500:]
