"""ViT-B/16 + LoRA(q,k,v) training-step benchmark (PyTorch CPU): the reference point for the
toolkit's `vit_lora_step_b16` figure. The same step as `bench/figures.ts b16`: a frozen,
randomly initialised open_clip-shaped ViT-B/16 (224 px, patch 16, width 768, 12 layers, 12 heads,
MLP 3072, ln_pre, exact GELU, ln_post on the class token, proj 768 -> 512), LoRA r = 8, alpha = 8
on q, k and v of every block, batch 8; the loss is the toolkit's prototype loss
(cross-entropy of exp(logit_scale) * normalize(features) @ prototypes^T), and SGD (lr 0.01,
momentum 0.9, weight decay 5e-4) updates every A, B and the logit scale. Attention uses
F.scaled_dot_product_attention, as open_clip's nn.MultiheadAttention does.
Prints one JSON line with the median wall and process CPU time per step.
Usage: python vit_b16_lora_torch.py [steps] [warmup] [threads] [--device cpu|cuda] [--batch N]
  [--model b16|tiny]
`--model tiny` runs the same step at the tiny ViT's sizes (28 px, patch 4, width 128, 4 layers,
4 heads, MLP 512, projection 128): the dry run of bench/gpu_check.sh (GPU_CHECK_DRY=1).
On CUDA everything is float32 with TF32 matrix products turned off (the toolkit's arithmetic);
each step ends with `loss.item()`, which waits for the GPU, so wall time is the step's."""
import argparse, json, math, os, statistics, sys, time
import torch
import torch.nn.functional as F

cli = argparse.ArgumentParser()
cli.add_argument("steps", type=int, nargs="?", default=10)
cli.add_argument("warmup", type=int, nargs="?", default=2)
cli.add_argument("threads", type=int, nargs="?", default=None)
cli.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
cli.add_argument("--batch", type=int, default=8)
cli.add_argument("--model", choices=["b16", "tiny"], default="b16")
args = cli.parse_args()
steps, warm = args.steps, args.warmup
if args.threads is not None:
    torch.set_num_threads(args.threads)
if args.device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_default_device("cuda")
torch.manual_seed(0)
B, C, R, NCLS = args.batch, 3, 8, 10
if args.model == "tiny":
    IMG, P, D, H, L, MLP, E = 28, 4, 128, 4, 4, 512, 128
else:
    IMG, P, D, H, L, MLP, E = 224, 16, 768, 12, 12, 3072, 512
G = IMG // P; NP = G * G; T = NP + 1
HD = D // H; SCALE = 8 / R
fz = lambda *s, std=0.02: torch.randn(*s) * std  # frozen
Wpe = fz(P * P * C, D)
cls, pos = fz(1, 1, D), fz(1, T, D)
g0, b0 = torch.ones(D), torch.zeros(D)
layers = []
for _ in range(L):
    l = dict(g1=torch.ones(D), b1=torch.zeros(D), g2=torch.ones(D), b2=torch.zeros(D),
             Wqkv=fz(D, 3 * D), bqkv=torch.zeros(3 * D), Wo=fz(D, D), bo=torch.zeros(D),
             W1=fz(D, MLP), c1=torch.zeros(MLP), W2=fz(MLP, D), c2=torch.zeros(D))
    for n in "qkv":
        l["A" + n] = ((torch.rand(R, D) * 2 - 1) / math.sqrt(D)).requires_grad_()
        l["B" + n] = torch.zeros(D, R).requires_grad_()
    layers.append(l)
gf, bf, proj = torch.ones(D), torch.zeros(D), fz(D, E)
protos = F.normalize(torch.randn(NCLS, E), dim=1)
logit_scale = torch.tensor(math.log(1 / 0.07)).requires_grad_()
params = [l[k] for l in layers for k in ("Aq", "Ak", "Av", "Bq", "Bk", "Bv")] + [logit_scale]
heads = lambda t: t.reshape(B, T, H, HD).transpose(1, 2)


def forward(img):
    patches = img.reshape(B, G, P, G, P, C).permute(0, 1, 3, 2, 4, 5).reshape(B * NP, P * P * C)
    h = (patches @ Wpe).reshape(B, NP, D)
    h = torch.cat([cls.expand(B, 1, D), h], 1) + pos
    h = F.layer_norm(h, (D,), g0, b0, 1e-5)
    for l in layers:
        x = F.layer_norm(h, (D,), l["g1"], l["b1"], 1e-5).reshape(B * T, D)
        qkv = x @ l["Wqkv"] + l["bqkv"]
        lora = torch.cat([(x @ l["A" + n].t()) @ l["B" + n].t() for n in "qkv"], 1) * SCALE
        q, k, v = (heads(t) for t in (qkv + lora).split(D, 1))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B * T, D)
        h = h + (o @ l["Wo"] + l["bo"]).reshape(B, T, D)
        x2 = F.layer_norm(h, (D,), l["g2"], l["b2"], 1e-5).reshape(B * T, D)
        h = h + (F.gelu(x2 @ l["W1"] + l["c1"]) @ l["W2"] + l["c2"]).reshape(B, T, D)
    hf = F.layer_norm(h[:, 0], (D,), gf, bf, 1e-5)
    return hf @ proj


img = torch.randn(B, IMG, IMG, C)
y = torch.arange(B) % NCLS
opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)


def step():
    opt.zero_grad(set_to_none=True)
    feats = F.normalize(forward(img), dim=1)
    loss = F.cross_entropy(logit_scale.exp() * feats @ protos.t(), y)
    loss.backward()
    opt.step()
    return loss.item()


losses = [step() for _ in range(warm)]
ts, cs = [], []
for _ in range(steps):
    c0 = time.process_time(); t0 = time.perf_counter(); losses.append(step())
    ts.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
print(json.dumps({"name": "torch_vit_lora_step_b16", "ms": round(statistics.median(ts) * 1e3, 1),
                  "cpu_ms": round(statistics.median(cs) * 1e3, 1), "load": os.getloadavg()[0],
                  "min_ms": round(min(ts) * 1e3, 1), "max_ms": round(max(ts) * 1e3, 1),
                  "steps": steps, "batch": B,
                  "model": "tiny" if args.model == "tiny" else "ViT-B/16", "threads": torch.get_num_threads(),
                  "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                  "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                  "torch": torch.__version__}))
