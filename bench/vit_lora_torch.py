"""Tiny ViT + LoRA(q,k,v) training-step micro benchmark (PyTorch CPU): the reference point for the
toolkit's own `vit_lora_step_tiny` figure (same architecture, batch, optimiser). A copy of the
team's shared PyTorch reference script that also prints one JSON line with wall and process CPU time.
Usage: python vit_lora_torch.py [steps] [warmup] [threads]"""
import sys, time, math, statistics, json, os, torch
import torch.nn.functional as F
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
warm = int(sys.argv[2]) if len(sys.argv) > 2 else 3
if len(sys.argv) > 3: torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)
B, IMG, C, P = 32, 28, 3, 4
G = IMG // P; NP = G * G; T = NP + 1; D, H, L, MLP, R, NCLS = 128, 4, 4, 512, 8, 8
HD = D // H; SCALE = 16 / R
fz = lambda *s, std=0.02: torch.randn(*s) * std          # frozen (requires_grad=False)
Wpe, bpe = fz(P * P * C, D), torch.zeros(D)
cls, pos = fz(1, 1, D), fz(1, T, D)
layers = []
for _ in range(L):
    l = dict(g1=torch.ones(D), b1=torch.zeros(D), g2=torch.ones(D), b2=torch.zeros(D),
             Wq=fz(D, D), bq=torch.zeros(D), Wk=fz(D, D), bk=torch.zeros(D), Wv=fz(D, D), bv=torch.zeros(D),
             Wo=fz(D, D), bo=torch.zeros(D), W1=fz(D, MLP), c1=torch.zeros(MLP), W2=fz(MLP, D), c2=torch.zeros(D))
    for n in "qkv":
        l["A" + n] = (torch.randn(D, R) / R).requires_grad_()
        l["B" + n] = torch.zeros(R, D).requires_grad_()
    layers.append(l)
gf, bf, Wh, bh = torch.ones(D), torch.zeros(D), fz(D, NCLS), torch.zeros(NCLS)
params = [l[k] for l in layers for k in ("Aq", "Bq", "Ak", "Bk", "Av", "Bv")]
lora = lambda x, W, b, A, Bm: x @ W + b + (x @ A) @ Bm * SCALE
heads = lambda t: t.reshape(B, T, H, HD).transpose(1, 2)

def forward(img):
    patches = img.reshape(B, G, P, G, P, C).permute(0, 1, 3, 2, 4, 5).reshape(B * NP, P * P * C)
    h = (patches @ Wpe + bpe).reshape(B, NP, D)
    h = torch.cat([cls.expand(B, 1, D), h], 1) + pos
    for l in layers:
        x = F.layer_norm(h, (D,), l["g1"], l["b1"], 1e-5).reshape(B * T, D)
        q, k, v = (heads(lora(x, l["W" + n], l["b" + n], l["A" + n], l["B" + n])) for n in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD), -1)
        o = (att @ v).transpose(1, 2).reshape(B * T, D)
        h = h + (o @ l["Wo"] + l["bo"]).reshape(B, T, D)
        x2 = F.layer_norm(h, (D,), l["g2"], l["b2"], 1e-5).reshape(B * T, D)
        h = h + (F.gelu(x2 @ l["W1"] + l["c1"]) @ l["W2"] + l["c2"]).reshape(B, T, D)
    hf = F.layer_norm(h, (D,), gf, bf, 1e-5)
    return hf[:, 0] @ Wh + bh

img = torch.rand(B, IMG, IMG, C)
y = torch.arange(B) % NCLS
opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
def step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(forward(img), y)
    loss.backward(); opt.step()
    return loss.item()
losses = [step() for _ in range(warm)]
ts, cs = [], []
for _ in range(steps):
    c0 = time.process_time(); t0 = time.perf_counter(); losses.append(step())
    ts.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
print(f"torch {torch.__version__} threads {torch.get_num_threads()} trainable {sum(p.numel() for p in params)}")
print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
print(f"median {statistics.median(ts)*1e3:.1f} ms/step, min {min(ts)*1e3:.1f}, max {max(ts)*1e3:.1f} ({steps} steps after {warm} warm-up)")
print(json.dumps({"name": "torch_vit_lora_step_tiny", "ms": round(statistics.median(ts) * 1e3, 1),
                  "cpu_ms": round(statistics.median(cs) * 1e3, 1), "load": os.getloadavg()[0],
                  "min_ms": round(min(ts) * 1e3, 1), "max_ms": round(max(ts) * 1e3, 1), "steps": steps,
                  "batch": B, "threads": torch.get_num_threads(), "torch": torch.__version__}))
