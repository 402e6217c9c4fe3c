"""The PyTorch original's training step, timed: train.py's loop body (get_batch,
forward, zero_grad, backward, AdamW step) with the original's model classes,
on CUDA when there is a GPU (a synchronize closes each step), else on the CPU
with torch.set_num_threads(1), as the README's side-by-side tables ran it.

  python3 measure/original_step.py ORIGINAL_SIMPLELM_DIR datas/tinyshakespeare.txt \
      LABEL:MODEL,STEPS,WARMUP[,cpu][,key=value...] ...

`cpu` is our --config=cpu preset; key=value overrides train.py's globals.
Prints one JSON line per spec (median and min ms of the timed steps)."""
import json, os, random, sys, time
import numpy as np
import torch

sys.path.insert(0, os.path.realpath(sys.argv[1]))
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu":
    torch.set_num_threads(1)

text = open(sys.argv[2], encoding="utf-8").read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = np.array([stoi[c] for c in text], dtype=np.uint16)
train_data = data[: int(0.9 * len(data))]
vocab_size = len(chars)

DEFAULTS = dict(batch_size=64, block_size=256, learning_rate=3e-4, dropout=0.2,
                char_encoding_len=12, use_batch_norm=True, max_hidden_nodes=2048, active_fn="relu",
                n_embd=384, n_head=6, n_layer=6, num_experts=8, top_k=2, nn_init="kaiming_normal",
                capacity_factor=0.0, aux_loss_coef=0.01, qkv_multiplier_min=0.5, qkv_multiplier_max=1.0,
                ffn_multiplier_min=0.5, ffn_multiplier_max=4.0, ffn_intermediate_divisor=256)
CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0)


def build(name, c):
    if name == "bigramLM":
        from bigramLM import BigramLanguageModel
        return BigramLanguageModel(vocab_size), None
    if name == "mlpLM":
        from mlpLM import MLPLanguageModel, gen_coding_patterns
        pats = gen_coding_patterns(c["char_encoding_len"], vocab_size, device)
        return MLPLanguageModel(vocab_size, c["max_hidden_nodes"], c["char_encoding_len"], c["block_size"], pats,
                                use_batch_norm=c["use_batch_norm"], use_active_fn=c["active_fn"],
                                dropout_rate=c["dropout"]), pats
    if name == "gptLM":
        from gptLM import GPTLanguageModel
        return GPTLanguageModel(vocab_size, c["n_embd"], c["block_size"], c["n_layer"], c["n_head"], c["dropout"]), None
    if name == "block_wise_scaling_gptLM":
        from block_wise_scaling_gptLM import DelightGPTLanguageModel
        return DelightGPTLanguageModel(vocab_size, c["n_embd"], c["block_size"], c["n_layer"], c["n_head"], c["dropout"],
                                       [c["qkv_multiplier_min"], c["qkv_multiplier_max"]],
                                       [c["ffn_multiplier_min"], c["ffn_multiplier_max"]],
                                       c["ffn_intermediate_divisor"]), None
    if name == "moeLM":
        from moeLM import SparseMoELanguageModel
        return SparseMoELanguageModel(vocab_size, c["n_head"], c["num_experts"], c["top_k"], c["n_layer"], c["n_embd"],
                                      c["block_size"], c["dropout"], nn_init=c["nn_init"]), None
    if name == "moa_moeLM":
        from moa_moeLM import SparseMoAMoELanguageModel
        return SparseMoAMoELanguageModel(vocab_size, c["n_head"], c["num_experts"], c["top_k"], c["n_layer"], c["n_embd"],
                                         c["block_size"], c["dropout"], nn_init=c["nn_init"],
                                         capacity_factor=c["capacity_factor"], aux_loss_coef=c["aux_loss_coef"]), None
    raise ValueError(name)


def get_batch(name, c, pats):  # train.py's get_batch / get_mlp_batch
    B, T = c["batch_size"], c["block_size"]
    ix = torch.randint(len(train_data) - T, (B,))
    if name == "mlpLM":
        x = torch.stack([torch.stack([pats[idx] for idx in torch.from_numpy(train_data[i:i+T].astype(np.int64))]).view(-1)
                         for i in ix])
        y = torch.stack([torch.from_numpy(train_data[i+T:i+T+1].astype(np.int64)) for i in ix])
        x, y = x.to(device), y.to(device)
        for b in range(B // 4):
            x[b, :random.randint(1, T)] = 0
        return x, y
    x = torch.stack([torch.from_numpy(train_data[i:i+T].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(train_data[i+1:i+1+T].astype(np.int64)) for i in ix])
    if device == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def run(label, name, overrides, steps, warmup):
    c = dict(DEFAULTS)
    for o in overrides:
        if o == "cpu":
            c.update(CPU)
        else:
            k, v = o.split("=")
            c[k] = type(DEFAULTS[k])(v)
    torch.manual_seed(1337)
    model, pats = build(name, c)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=c["learning_rate"])
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        xb, yb = get_batch(name, c, pats)
        logits, loss = model(xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps(dict(label=label, model_name=name, device=device, ms_median=round(times[len(times) // 2], 3),
                          ms_min=round(times[0], 3), steps=steps,
                          params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3))), flush=True)
    del model, opt


if __name__ == "__main__":
    if device == "cuda":
        print(json.dumps(dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(0))), flush=True)
    for spec in sys.argv[3:]:
        label, rest = spec.split(":", 1)
        parts = rest.split(",")
        steps, warmup = int(parts[1]), int(parts[2])
        try:
            run(label, parts[0], [p for p in parts[3:] if p], steps, warmup)
        except Exception as e:  # one config failing does not stop the rest
            print(json.dumps(dict(label=label, error=repr(e)[:300])), flush=True)
