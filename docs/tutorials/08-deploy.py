# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 8: deploy — ONNX export, plain onnxruntime, and `nailseg serve`
#
# A trained run becomes one `.onnx` file that any ONNX consumer can run: a phone app, a C++
# service, a browser. This notebook:
#
# - exports a run to ONNX (`torch.onnx.export`), verified against the torch model;
# - runs it with plain `onnxruntime` in a few lines, with no nailseg import;
# - quantises it to int8 (`onnxruntime.quantization.quantize_static`), checked against float32;
# - serves it over HTTP: a FastAPI route of a few lines, then `nailseg serve` (FastAPI + uvicorn), and calls the API.
#
# Install with `pip install -e '.[torch,export,serve]'`; inference alone needs only
# `pip install -e '.[onnx]'` (onnxruntime, no torch).

# %%
import json
from pathlib import Path

from nailseg.tutorial import budget, grid, real_data, record, sh, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
EPOCHS = budget(full=12, test=6)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
run = Path(sh(f"nailseg train configs/nails-pretrained-cpu.yaml data.root={data} model.encoder=tu-tf_efficientnet_lite0 "
              f"data.image_size=192 data.crop_size=null data.split.val=0.15 data.split.test=0.2 trainer.max_epochs={EPOCHS} optim.lr=0.002 "
              "optim.warmup_epochs=1", tail=3))
show_png(run / "curves.png")
record(val_iou=json.loads((run / "summary.json").read_text())["val_iou"])

# %% [markdown]
# ## 1. Export
#
# The exported graph takes what an app has — a `uint8` RGB photo `(N, H, W, 3)` of any size — and
# returns the foreground probability `(N, H, W)` at that size. Everything `nailseg predict` does is
# inside the graph: the resize to the training size, the normalisation (the encoder's own
# mean/std), the model, the sigmoid and the resize back. `nailseg export` then checks the file
# twice on the run's validation photos, against the torch module it was traced from and against
# nailseg's own predictor, and refuses it if they disagree; `export.json` records both checks.

# %%
sh(f"nailseg export {run} --format onnx", tail=3)
report = json.loads((run / "export.json").read_text())
print({k: report[k] for k in ("format", "opset", "exporter", "mask_agreement", "verified_on")})
print("graph check:", report["graph_check"])
print("metadata:", {k: report["metadata"][k] for k in ("image_size", "threshold", "normalization")})

# %% [markdown]
# The core of it is one `torch.onnx.export` call. Below is the minimal version, in plain PyTorch:
# the run's network rebuilt with smp and loaded from `nailseg export --format state_dict` (plain
# tensors, loadable with `weights_only=True`), exported as bare logits at the training size with the
# batch size left free (the classic TorchScript exporter, `dynamo=False`), then run by onnxruntime
# beside torch. nailseg's export above is more: it wraps the network in `ExportWrapper` (the resize
# to the training size, the normalisation, the sigmoid and the resize back, all inside the graph),
# exports it with the dynamo exporter (`export.json`: `exporter`), and verifies it on real photos:

# %%
import numpy as np
import onnxruntime as ort
import segmentation_models_pytorch as smp
import torch

state = Path(sh(f"nailseg export {run} --format state_dict", tail=1).splitlines()[-1])
net = smp.create_model("Unet", encoder_name="tu-tf_efficientnet_lite0", encoder_weights=None, classes=1)
net.load_state_dict(torch.load(state, weights_only=True))
net.eval()
x = torch.randn(2, 3, 192, 192)
torch.onnx.export(net, (x,), "plain.onnx", input_names=["image"], output_names=["logits"],
                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
session = ort.InferenceSession("plain.onnx", providers=["CPUExecutionProvider"])
with torch.no_grad():
    difference = np.abs(session.run(None, {"image": x.numpy()})[0] - net(x).numpy()).max()
print(f"plain torch.onnx.export: onnxruntime vs torch, max |logit difference| {difference:.2e}")
assert difference < 1e-3

# %% [markdown]
# ## 2. Plain onnxruntime, no nailseg
#
# The photo goes in as it is: the graph resizes it to the training size (stored in the metadata as
# `nailseg.image_size`) and the probability map back. These lines are all an app needs:

# %%
import cv2
import numpy as np
import onnxruntime as ort

onnx_model = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
threshold = float(onnx_model.get_modelmeta().custom_metadata_map["nailseg.threshold"])

photo_path = data / "images" / json.loads((run / "split.json").read_text())["test"][0]
photo = cv2.cvtColor(cv2.imread(str(photo_path)), cv2.COLOR_BGR2RGB)               # uint8 RGB, any size
prob = onnx_model.run(None, {onnx_model.get_inputs()[0].name: photo[None]})[0][0]          # (H, W) of the photo
mask = prob > threshold
print(f"{photo_path.name}: {photo.shape[1]}x{photo.shape[0]}, {mask.mean():.1%} nail")

# %% [markdown]
# The same photo through `nailseg predict`, with the ONNX file and with the run's torch model, and
# the agreement of each mask with the plain onnxruntime one:

# %%
from PIL import Image

for target, folder in ((run / "model.onnx", "predicted-onnx"), (run, "predicted-torch")):
    sh(f"nailseg predict {target} {photo_path} --out {run}/{folder} --quiet", tail=1)
    ours = np.asarray(Image.open(run / folder / f"{photo_path.stem}_mask.png")) > 127
    print(f"plain onnxruntime vs nailseg predict {target.name}: {np.mean(ours == mask):.4%} of the pixels agree")
from nailseg.core.visualize import overlay

grid([photo, overlay(photo, mask)], ["photo", "plain onnxruntime"], cols=2, width=4.5)

# %% [markdown]
# ## 3. int8
#
# `--int8` adds `model.int8.onnx`: ONNX Runtime's static quantisation (QDQ, per-channel weights),
# calibrated on the run's training photos and refused unless its masks agree with the float32
# model's. Which settings it tries first depends on the CPU the model is for (`--int8-target`,
# default this machine's; `nailseg doctor` shows it):
#
# - **VNNI or AMX-INT8** (recent Xeons, AMD Zen 4/5) sum `uint8 x int8` products in 32 bits, so
#   full-range int8 weights (`u8s8`) come first.
# - **AVX2 only** has no such instruction: ONNX Runtime sums pairs of products in 16 bits, and
#   255 x 127 x 2 does not fit, so large activations saturate and masks move. Weights in 7 bits
#   (`u8s8-7bit`, `reduce_range`) cannot overflow, so they come first there.
#
# In ONNX Runtime's own API, one setting is one `quantize_static` call, fed a few training photos
# through a `CalibrationDataReader` (the graph takes uint8 RGB photos, so the photos go in as they are):
#
# ```python
# from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
#                                       quantize_static)
# from onnxruntime.quantization.shape_inference import quant_pre_process
#
# class Photos(CalibrationDataReader):
#     def __init__(self, photos):
#         self.feeds = iter([{"image": photo[None]} for photo in photos])
#
#     def get_next(self):
#         return next(self.feeds, None)  # None: calibration is over
#
# quant_pre_process("model.onnx", "model.pre.onnx", skip_symbolic_shape=True)
# quantize_static("model.pre.onnx", "model.int8.onnx", Photos(training_photos),
#                 quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
#                 activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,  # u8s8
#                 reduce_range=False,  # True: 7-bit weights (u8s8-7bit), the AVX2-only first choice
#                 nodes_to_quantize=network_nodes)  # the network's own nodes only
# ```
#
# `network_nodes` keeps the graph's resize, normalisation and sigmoid in float32: only the network
# between them is quantised. nailseg adds the checks around it. When the first setting strays, the next is tried;
# `export.int8.json` records what was tried, the CPU flags, and the figures. A model that has barely learned can be refused on every setting (its
# probabilities sit near the threshold, where any rounding flips pixels): the refusal then names each
# setting's agreement, and the float32 file stays the one to ship.

# %%
import time

sh(f"nailseg export {run} --format onnx --int8", tail=3, expect=(0, 2))
if (run / "model.int8.onnx").exists():
    int8_report = json.loads((run / "export.int8.json").read_text())
    print("chosen:", int8_report["setting"]["name"], "for", int8_report["target"], "| CPU flags:", int8_report["cpu"]["flags"])
    print({k: int8_report[k] for k in ("mask_agreement", "mask_iou", "bytes", "bytes_fp32")})
    sample = cv2.resize(photo, (192, 192))[None]
    for name in ("model.onnx", "model.int8.onnx"):
        s = ort.InferenceSession(str(run / name), providers=["CPUExecutionProvider"])
        for _ in range(3):
            s.run(None, {"image": sample})
        start = time.perf_counter()
        for _ in range(20):
            s.run(None, {"image": sample})
        print(f"{name}: {20 / (time.perf_counter() - start):.1f} images/s (this machine, in-process, indicative only)")
else:
    print("int8 refused on this CPU: every setting tried moved the masks past the tolerance (see above);"
          " ship model.onnx, or model.fp16.onnx from --half")

# %% [markdown]
# ## 4. A service: FastAPI, then `nailseg serve`
#
# The heart of a segmentation service in FastAPI's own code: one route that reads the upload, runs
# the onnxruntime session of section 2 and answers JSON. FastAPI's `TestClient` calls it in-process
# (no server, no port):

# %%
import io

from fastapi import FastAPI, UploadFile
from fastapi.testclient import TestClient

app = FastAPI()


@app.post("/segment")
def segment_upload(image: UploadFile) -> dict:  # a plain def: FastAPI runs it in a worker thread, off the event loop
    rgb = np.asarray(Image.open(image.file).convert("RGB"))
    nail = onnx_model.run(None, {onnx_model.get_inputs()[0].name: rgb[None]})[0][0] > threshold
    return {"file": image.filename, "width": rgb.shape[1], "height": rgb.shape[0], "nail_share": float(nail.mean())}


with TestClient(app) as client:
    answer = client.post("/segment", files={"image": (photo_path.name, photo_path.read_bytes(), "image/jpeg")})
print(answer.status_code, answer.json())

# %% [markdown]
# `nailseg serve MODEL.onnx` starts FastAPI on uvicorn with onnxruntime: `POST /v1/segment`
# (multipart field `image`) answers a PNG mask, an overlay, JSON (nail count, share, COCO RLE) or
# all of it at once (`format=bundle`, what the upload page at `/` uses: one inference per upload).
# Uploads are size-checked while they stream, and bad ones get one JSON error with a 4xx status.

# %%
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

with socket.socket() as probe:  # a free port
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
server = subprocess.Popen([sys.executable, "-m", "nailseg.cli", "serve", str(run / "model.onnx"), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
base = f"http://127.0.0.1:{port}"
for _ in range(120):
    try:
        print("healthz:", urllib.request.urlopen(f"{base}/healthz", timeout=1).read().decode())
        break
    except OSError:
        time.sleep(0.5)


def segment(path: Path, fmt: str) -> bytes:
    """POST one photo as multipart/form-data, with the standard library only."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{base}/v1/segment?format={fmt}", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return urllib.request.urlopen(request, timeout=60).read()


summary = json.loads(segment(photo_path, "json"))
# nail_count: the connected regions of the mask of at least 20 pixels (a model trained this briefly
# also leaves blobs on the skin, and they count)
print({k: summary[k] for k in ("width", "height", "nail_count", "fg_share")})

served = np.asarray(Image.open(io.BytesIO(segment(photo_path, "overlay"))))
print("model info:", json.loads(urllib.request.urlopen(f"{base}/v1/model").read())["model"])
server.terminate()
server.wait(timeout=30)
grid([served], ["the overlay the service returned"], cols=1, width=5)

# %% [markdown]
# Load-test a running service with `nailseg bench serve MODEL.onnx` (requests/s and latency
# percentiles, JSON + PNG). Measured figures: [results](../results.md).
