"""The evidence grids on a lent GPU, as one command that ends inside the lease (python3 tools/device_run/drive.py).

From the repo root on the device, after `prep.py` packed .gpu/ here: copy the repo to /tmp/w/main and rebuild
../shared/data beside it (run ids name ../shared/data paths), check that the device's torch picks the packed
images, smoke-test every method on CUDA (a failing case drops only the grids that need it), then run three
streams side by side until $BUDGET seconds (default 545) and pack results/h200 (no weights) into
$OUT/h200.tar.gz. $STREAMS (comma-separated, default "table1-224,ladder-224") picks from:

* table1-224: Table 1 with pinned zeros at the faithful imagenet geometry, bf16;
* ladder-224: the granularity ladder at 224 px, bf16;
* small: the CPU grids (fluid, table1, precision, ladder, figure1, figure2) again with device=cuda, fp32, 8 jobs.

Grids are resumable: a later lease carries the untarred results/h200 back and continues. SIM=1 runs the
same plumbing on a CPU machine with one-epoch, 100-image cells.
"""
import gzip, json, lzma, os, shutil, signal, subprocess, sys, tarfile, time, traceback
from pathlib import Path

T0 = time.time()
BUDGET = float(os.environ.get("BUDGET", "545"))
SIM = os.environ.get("SIM") == "1"  # plumbing test on a CPU machine: tiny runs on the CPU
OUT = Path(os.environ.get("OUT") or "/tmp/out"); OUT.mkdir(parents=True, exist_ok=True)
REPO = Path.cwd(); PACK = REPO / ".gpu"
WORK = Path("/tmp/w"); MAIN = WORK / "main"; DATA = WORK / "shared" / "data"
LOG = open(OUT / "log.txt", "a")


def say(*a):
    msg = f"[{time.time() - T0:6.1f}s] " + " ".join(map(str, a))
    print(msg, flush=True); LOG.write(msg + "\n"); LOG.flush()


def unpack():
    man = json.loads(gzip.decompress((PACK / "manifest.json.gz").read_bytes()))
    blob, lengths = (PACK / "cifar.bin").read_bytes(), man["cifar_lengths"]
    pos, k = 0, 0
    for split in ("train", "test"):
        files, keep = man[f"cifar_{split}"]["files"], man[f"cifar_{split}"]["keep"]
        keepset, placeholder = set(keep), None
        for i, f in enumerate(files):
            p = DATA / "cifar10-jpeg" / f
            p.parent.mkdir(parents=True, exist_ok=True)
            if i in keepset:
                data = blob[pos:pos + lengths[k]]; pos += lengths[k]; k += 1
                placeholder = placeholder or data
                p.write_bytes(data)
        for i, f in enumerate(files):
            if i not in keepset:
                (DATA / "cifar10-jpeg" / f).write_bytes(placeholder)
    assert pos == len(blob), (pos, len(blob))
    raw = DATA / "FashionMNIST" / "raw"; raw.mkdir(parents=True, exist_ok=True)
    (raw / "train-images-idx3-ubyte").write_bytes(lzma.decompress((PACK / "fmnist-train-images.xz").read_bytes()))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(PACK / name, raw / name)
    (DATA / "weights").mkdir(parents=True, exist_ok=True)
    shutil.copy(PACK / "mobilenet_v2-b0353104.pth", DATA / "weights")
    return man


def verify(man):
    """The device's torch must pick the same subsets (randperm) as the machine that packed the data."""
    import torch
    from polarpack.data import balanced_subset, load_splits, read_idx
    classes = sorted({f.split("/")[1] for f in man["cifar_train"]["files"]})
    labels = torch.tensor([classes.index(f.split("/")[1]) for f in man["cifar_train"]["files"]])
    fl = torch.from_numpy(read_idx(DATA / "FashionMNIST/raw/train-labels-idx1-ubyte.gz").astype("int64"))
    for s in man["seeds"]:
        for lab, keep in ((labels, man["cifar_train"]["keep"]), (fl, man["fmnist_train_keep"])):
            pick = set(balanced_subset(lab, man["train_size"], torch.Generator().manual_seed(s)).tolist())
            assert pick <= set(keep), f"seed {s}: the device picks {len(pick - set(keep))} images not packed"
    for name in ("cifar10", "fashion-mnist"):  # warm the decode cache once
        tr, va = load_splits(name, data_dir=DATA, seed=0)
        say("data", name, tuple(tr.images.shape), tuple(va.images.shape), float(tr.images.float().mean()))


SMOKE = r'''
import json, sys, time, traceback, torch
from polarpack import train
print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", flush=True)
SIM = {SIM!r}
mini = dict(dataset="fashion-mnist-mini", train_size=200, val_size=100, batch_size=100,
            device="cpu" if SIM else "cuda", progress=False, overwrite=True)
W = "../shared/data/weights/mobilenet_v2-b0353104.pth"
cases = {
 "zf-fs-fp32": dict(model="zfnet", method="freeze-spin", dist="paper:alexnet", precision="fp32", epochs=2),
 "ax-fl-bf16": dict(model="alexnet", method="fluid-spin", dist="paper:alexnet", precision="bf16", epochs=2),
 "zf-perm-free": dict(model="zfnet", method="fluid-spin", dist="paper:alexnet", fluid_mode="permute", zeros="free",
                      precision="fp32", epochs=2, checkpoint_every=2),
 "zf-reset": dict(model="zfnet", method="fluid-spin", dist="paper:alexnet", fluid_mode="reset", precision="fp32", epochs=2),
 "ax-scratch": dict(model="alexnet", method="scratch", precision="fp32", epochs=2),
 "zf224-bf16": dict(model="zfnet", geometry="imagenet", method="freeze-spin", dist="paper:table1-exp4", precision="bf16", epochs=1),
 "mnv2-in": dict(model="mobilenet_v2", method="freeze-in", weights="examples/mobilenet_v2-imagenet-pattern.polar.safetensors",
                 precision="bf16", image_size=224, epochs=1),
 "mnv2-ft": dict(model="mobilenet_v2", method="fluid-in", weights=W, precision="fp32", epochs=1),
 "mnv2-ch": dict(model="mobilenet_v2", method="freeze-spin", dist="examples/mobilenet_v2-imagenet-channel.polar",
                 precision="fp32", epochs=1),
}
ok = {}
for name, opts in cases.items():
    t = time.time()
    try:
        r = train(out=f"/tmp/smoke/{name}", **mini, **opts)
        ok[name] = True
        print(f"ok {name} {time.time()-t:.1f}s acc={r.summary['final_val_acc']} "
              f"epoch_s={[round(m['epoch_seconds'], 2) for m in r.metrics]}", flush=True)
    except Exception:
        ok[name] = False
        print(f"FAIL {name}\n{traceback.format_exc(limit=8)}", flush=True)
    json.dump(ok, open("/tmp/smoke/ok.json", "w"))
'''

STREAM = r'''
import sys, time
from polarpack.grid import load_experiment
from polarpack.runner import run_experiment
for file, sets, results, jobs, cores in {plan!r}:
    t = time.time()
    try:
        r = run_experiment(load_experiment(file, sets), results, jobs=jobs, cores=cores, progress=False)
        print("GRID", file, results, r.counts, f"{{time.time()-t:.0f}}s", flush=True)
    except Exception as exc:
        print("GRID-ERROR", file, type(exc).__name__, exc, flush=True)
'''


def streams(ok):
    cuda = ["device=cuda", "checkpoint_every=20"]
    if SIM:
        cuda = ["device=cpu", "epochs=1", "train_size=100", "val_size=100", "batch_size=100", "grid.seeds=[0]"]
    paper = all(ok.get(n) for n in ("zf-fs-fp32", "zf-perm-free", "zf-reset", "ax-scratch"))
    mnv2 = all(ok.get(n) for n in ("mnv2-ft", "mnv2-ch", "mnv2-in"))
    small = [(f"examples/{f}.toml", cuda, "results/h200/small", 8, 16)
             for f in ("fluid", "table1", "precision", "ladder", "figure1", "figure2")
             if (mnv2 if f == "ladder" else paper)]
    plans = {
        "small": small,
        "table1-224": [("examples/table1.toml", cuda + ["geometry=imagenet", "precision=bf16", "zeros=pin"],
                        "results/h200/imagenet", 1, 2)],
        "ladder-224": [("examples/ladder.toml", cuda + ["image_size=224", "precision=bf16"],
                        "results/h200/ladder224", 1, 2)],
    }
    use = {"small": bool(small), "table1-224": ok.get("zf224-bf16"), "ladder-224": mnv2}
    wanted = os.environ.get("STREAMS", "table1-224,ladder-224").split(",")
    return {k: v for k, v in plans.items() if use[k] and k in wanted}


def count(results):
    done = run = 0
    for s in (MAIN / results).glob("runs/*/summary.json"):
        st = json.loads(s.read_text()).get("status")
        done += st in ("completed", "diverged"); run += st == "running"
    return done, run


def main():
    say("copy repo and unpack data")
    shutil.copytree(REPO, MAIN, ignore=shutil.ignore_patterns(".gpu", ".git"))
    man = unpack()
    os.chdir(MAIN)
    env = {**os.environ, "PYTHONPATH": str(MAIN), "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": "/tmp/cache",
           "HF_HUB_OFFLINE": "1", "POLARPACK_GIT_COMMIT": (PACK / "commit").read_text().strip(),
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    os.environ.update(env)
    sys.path.insert(0, str(MAIN))
    verify(man)
    say("smoke")
    try:
        smoke = subprocess.run([sys.executable, "-c", SMOKE.replace("{SIM!r}", repr(SIM))], env=env,
                               capture_output=True, text=True, timeout=150)
        say(smoke.stdout[-6000:], smoke.stderr[-3000:] if smoke.returncode else "")
    except subprocess.TimeoutExpired as exc:
        say("SMOKE TIMEOUT", (exc.stdout or b"")[-4000:])
    ok = json.loads(Path("/tmp/smoke/ok.json").read_text()) if Path("/tmp/smoke/ok.json").exists() else {}
    plans = streams(ok)
    say("streams:", list(plans))
    procs = {}
    for name, plan in plans.items():
        f = open(OUT / f"stream-{name}.txt", "w")
        procs[name] = subprocess.Popen([sys.executable, "-c", STREAM.format(plan=plan)], env=env, stdout=f,
                                       stderr=subprocess.STDOUT, start_new_session=True)
    stores = ["results/h200/small", "results/h200/imagenet", "results/h200/ladder224"]
    while time.time() - T0 < BUDGET and any(p.poll() is None for p in procs.values()):
        time.sleep(10)
        smi = "" if SIM else subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
        say("progress", {s.split("/")[-1]: count(s) for s in stores}, "gpu", smi,
            {n: p.poll() for n, p in procs.items()})
    for name, p in procs.items():
        if p.poll() is None:
            say("stopping", name)
            os.killpg(p.pid, signal.SIGTERM)
    time.sleep(3)
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    say("final", {s: count(s) for s in stores})
    Path("results/h200").mkdir(parents=True, exist_ok=True)  # nothing finished: an empty archive still says so
    with tarfile.open(OUT / "h200.tar.gz", "w:gz") as tar:
        tar.add("results/h200", arcname="h200",
                filter=lambda ti: None if ti.name.endswith((".safetensors", ".tmp", ".lock", ".log")) else ti)
        for p in Path("/tmp/smoke").glob("*/metrics.jsonl"):
            tar.add(p, arcname=f"smoke/{p.parent.name}.jsonl")
    say("harvested", (OUT / "h200.tar.gz").stat().st_size)


try:
    main()
except Exception:
    say("DRIVER ERROR", traceback.format_exc())
    sys.exit(1)
