"""Importing an image archive from S3: medray's Ray Data pipeline against a plain loop.

For each N, writes N real images (BreastMNIST's, upscaled to 224x224 PNG, cycling through
its 780 when N is larger) and a labels CSV into the local S3 server (moto, on 127.0.0.1),
then imports them, each in a fresh process:
  (a) `medray data import images s3://... --labels ...`: the Ray Data pipeline, Ray on 2 CPUs;
  (b) a plain single-process loop over the same objects: boto3 GET, PIL decode, pyarrow
      Parquet shards of the same size written back to the same S3 server.
Prints JSON: images/s of each (the import proper, Ray already started as on a cluster;
the whole process's wall time beside it), the ratio a/b, and each process's peak RSS
(the driver's own, not Ray's workers': what grows with N if the driver holds the images).

    python benchmarks/import_scale.py [--sizes 2000,20000] [--cpus 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224

MEDRAY = """
import json, resource, sys, time
from medray.cluster.config import RayConfig
from medray.cluster.runtime import ensure_ray
from medray.cluster.storage import Storage
from medray.train.data.importers import ImportOptions, ImportRequest, import_dataset
prefix, store, cpus = sys.argv[1], sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
ensure_ray(RayConfig(num_cpus=cpus))
ready = time.perf_counter()
manifest = import_dataset(Storage(store), ImportRequest(
    kind="images", source=prefix, name="bench", labels=prefix + "/labels.csv",
    options=ImportOptions(image_size=%d)))
done = time.perf_counter()
rows = sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test"))
print(json.dumps({"images": rows, "import_seconds": done - ready, "process_seconds": done - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""" % SIZE

PLAIN = """
import hashlib, io, json, resource, sys, time
import boto3, numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
from medray.train.data.image_archive import ArchiveOptions
prefix, store = sys.argv[1], sys.argv[2]
started = time.perf_counter()
s3 = boto3.client("s3")
bucket, key_prefix = prefix.removeprefix("s3://").split("/", 1)
out_bucket, out_prefix = store.removeprefix("s3://").split("/", 1)
labels = pd.read_csv(io.BytesIO(s3.get_object(Bucket=bucket, Key=key_prefix + "/labels.csv")["Body"].read()))
rows_per_shard = ArchiveOptions(size=%d).rows_per_shard
written = 0
for start in range(0, len(labels), rows_per_shard):
    chunk = labels.iloc[start:start + rows_per_shard]
    pixels = []
    for path in chunk["path"]:
        data = s3.get_object(Bucket=bucket, Key=key_prefix + "/" + path)["Body"].read()
        pixels.append(np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((%d, %d), Image.Resampling.BILINEAR)))
    flat = np.stack(pixels).reshape(len(pixels), -1)
    table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]),
                      "label": pa.array(chunk["label"].astype("category").cat.codes.astype("int64"))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    s3.put_object(Bucket=out_bucket, Key=f"{out_prefix}/plain/part-{start:08d}.parquet", Body=sink.getvalue().to_pybytes())
    written += len(pixels)
done = time.perf_counter()
print(json.dumps({"images": written, "import_seconds": done - started, "process_seconds": done - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""" % (SIZE, SIZE, SIZE)


def breastmnist_pngs(shared: Path) -> tuple[list[bytes], list[str]]:
    from PIL import Image

    arrays = np.load(shared / "breastmnist.npz")
    images = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")])
    labels = np.concatenate([arrays[f"{s}_labels"].reshape(-1) for s in ("train", "val", "test")])
    encoded = []
    for image in images:
        out = io.BytesIO()
        Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BILINEAR).save(out, format="PNG")
        encoded.append(out.getvalue())
    return encoded, ["malignant" if label == 0 else "normal_or_benign" for label in labels]


def write_archive(bucket: str, prefix: str, n: int, pngs: list[bytes], names: list[str]) -> str:
    import boto3

    s3 = boto3.client("s3")
    paths = [f"images/{i:07d}.png" for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"{prefix}/{paths[i]}", Body=pngs[i % len(pngs)]),
                      range(n)))
    csv = "path,label\n" + "".join(f"{p},{names[i % len(names)]}\n" for i, p in enumerate(paths))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/labels.csv", Body=csv.encode())
    return f"s3://{bucket}/{prefix}"


def run(script: str, *args: str) -> dict:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                            cwd=tempfile.gettempdir())
    if result.returncode:
        raise SystemExit(f"benchmark step failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000", help="comma-separated image counts")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs the Ray pipeline is given")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved (a, b) rounds per size")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()

    import boto3

    from medray.cluster.local_s3 import LocalS3

    with LocalS3.start() as server:
        os.environ.update(server.client_env("bench"))
        os.environ.pop("AWS_REGION", None)
        boto3.client("s3").create_bucket(Bucket="bench")
        pngs, names = breastmnist_pngs(Path(args.shared))
        results = {}
        for n in (int(size) for size in args.sizes.split(",")):
            print(f"writing {n} images to the local S3 server ...", file=sys.stderr, flush=True)
            prefix = write_archive("bench", f"archive-{n}", n, pngs, names)
            rounds = {"medray_ray_data": [], "plain_loop": []}
            for index in range(args.rounds):
                print(f"N={n} round {index + 1}: medray ...", file=sys.stderr, flush=True)
                rounds["medray_ray_data"].append(run(MEDRAY, prefix, f"s3://bench/store-{n}-{index}", str(args.cpus)))
                print(f"N={n} round {index + 1}: plain loop ...", file=sys.stderr, flush=True)
                rounds["plain_loop"].append(run(PLAIN, prefix, f"s3://bench/plain-{n}-{index}"))
            best = {name: min(runs, key=lambda r: r["import_seconds"]) for name, runs in rounds.items()}
            rate = {name: r["images"] / r["import_seconds"] for name, r in best.items()}
            results[str(n)] = {
                "images_per_s": {name: round(value, 1) for name, value in rate.items()},
                "ratio_medray_over_plain": round(rate["medray_ray_data"] / rate["plain_loop"], 3),
                "process_images_per_s": {name: round(r["images"] / r["process_seconds"], 1)
                                         for name, r in best.items()},
                "driver_peak_rss_mb": {name: round(r["peak_rss_mb"], 1) for name, r in best.items()},
                "runs": rounds,
            }
    sizes = sorted(results, key=int)
    rss = [results[n]["driver_peak_rss_mb"]["medray_ray_data"] for n in (sizes[0], sizes[-1])]
    print(json.dumps({
        "benchmark": "import_scale", "image_size": SIZE, "ray_cpus": args.cpus, "rounds": args.rounds,
        "sizes": results,
        "medray_driver_rss_ratio_largest_over_smallest": round(rss[1] / rss[0], 3),
        "targets": {"ratio_medray_over_plain": ">= 1.6", "medray_driver_rss_ratio_largest_over_smallest": "<= 1.25"},
    }, indent=2))


if __name__ == "__main__":
    main()
