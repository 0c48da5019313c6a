"""PyTorch side of `cargo xtask bench`: times the same cases with torch eager
on CPU and prints one JSON object {case name: seconds}.

Usage: python torch_bench.py CASES.json THREADS
       python torch_bench.py --serve CASES.json THREADS
       python torch_bench.py --memory CASES.json THREADS NAME   (the case's peak memory)
With --serve the process stays up and times one case per request: each line
read from stdin is a case name, each answer one JSON line {"name", "seconds"}
(null when the case has no torch side); cases are built once, at their first
request. `cargo xtask bench` alternates its own timing with these requests.
Model cases need the reference implementations; set ANYTIME_REF_MSDNET,
ANYTIME_REF_RANET, ANYTIME_REF_SCAN and ANYTIME_REF_GFNET to checkouts of
kalviny/MSDNet-PyTorch, yangle15/RANet-pytorch,
ArchipLab-LinfengZhang/pytorch-scalable-neural-networks and
blackfeather-wang/GFNet-Pytorch (their code is imported from there, never copied).
"""
import json, os, statistics, sys, time, types, importlib.util

import torch
import torch.nn as nn
import torch.nn.functional as F

SERVE = len(sys.argv) > 1 and sys.argv[1] == "--serve"
MEMORY = len(sys.argv) > 1 and sys.argv[1] == "--memory"
ARGS = sys.argv[2:] if SERVE or MEMORY else sys.argv[1:]
cases = json.load(open(ARGS[0]))
torch.set_num_threads(int(ARGS[1]))
torch.manual_seed(0)


def timeit(fn, min_time=0.5, max_runs=20):
    for _ in range(2):
        fn()
    times = []
    while len(times) < 3 or (sum(times) < min_time and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def conv_case(c):
    x = torch.randn(c["n"], c["cin"], c["hw"], c["hw"], requires_grad=c["backward"])
    w = torch.randn(c["cout"], c["cin"] // c["groups"], c["k"], c["k"], requires_grad=c["backward"])
    def run():
        y = F.conv2d(x, w, None, c["stride"], c["k"] // 2, 1, c["groups"])
        if c["backward"]:
            y.backward(torch.ones_like(y))
    return run


def bn_case(c):
    x = torch.randn(c["n"], c["c"], c["hw"], c["hw"], requires_grad=True)
    bn = nn.BatchNorm2d(c["c"])
    bn.train()
    def run():
        y = F.relu(bn(x))
        y.backward(torch.ones_like(y))
    return run


def dense_stack(c):
    # A small dense multi-scale stack: per scale, conv-BN-ReLU units whose
    # outputs are concatenated (MSDNet-style), and a strided link between scales.
    layers, growth = c["layers"], c["growth"]
    mods = nn.ModuleList()
    ch = [c["c"], 2 * c["c"]]
    for _ in range(layers):
        mods.append(nn.ModuleList([
            nn.Sequential(nn.Conv2d(ch[0], growth, 3, 1, 1, bias=False), nn.BatchNorm2d(growth), nn.ReLU()),
            nn.Sequential(nn.Conv2d(ch[0], growth, 3, 2, 1, bias=False), nn.BatchNorm2d(growth), nn.ReLU()),
            nn.Sequential(nn.Conv2d(ch[1], growth, 3, 1, 1, bias=False), nn.BatchNorm2d(growth), nn.ReLU()),
        ]))
        ch = [ch[0] + growth, ch[1] + 2 * growth]
    x0 = torch.randn(c["n"], c["c"], c["hw"], c["hw"])
    x1 = torch.randn(c["n"], 2 * c["c"], c["hw"] // 2, c["hw"] // 2)
    def run():
        a, b = x0, x1
        for m in mods:
            a, b = torch.cat([a, m[0](a)], 1), torch.cat([b, m[1](a), m[2](b)], 1)
        (a.sum() + b.sum()).backward()
    return run


def inverted_residual(c):
    # MobileNetV3's inverted residual (gen-efficientnet's layout): 1x1
    # expansion, BN, act, kxk depthwise, BN, act, optional squeeze-excite
    # (ReLU inside, hard-sigmoid gate), 1x1 projection, BN, plus the input.
    ch, mid, red, k = c["c"], c["mid"], c["reduce"], c["k"]
    act = nn.Hardswish if c["hard_swish"] else nn.ReLU

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_reduce = nn.Conv2d(mid, red, 1)
            self.conv_expand = nn.Conv2d(red, mid, 1)

        def forward(self, x):
            s = self.conv_expand(F.relu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
            return x * F.hardsigmoid(s)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Conv2d(ch, mid, 1, bias=False), nn.BatchNorm2d(mid), act(),
                      nn.Conv2d(mid, mid, k, 1, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), act()]
            if c["se"]:
                layers.append(SE())
            layers += [nn.Conv2d(mid, ch, 1, bias=False), nn.BatchNorm2d(ch)]
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.body(x)

    block = Block()
    x = torch.randn(c["n"], ch, c["hw"], c["hw"])
    if c["train"]:
        block.train()
        def run():
            block(x).sum().backward()
    else:
        block.eval()
        def run():
            with torch.no_grad():
                block(x)
    return run


def load(path, module):
    spec = importlib.util.spec_from_file_location(module, os.path.join(path, "models", module + ".py"))
    mod = importlib.util.module_from_spec(spec)
    stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.stdout = stdout
    return mod


def model_case(c):
    a = types.SimpleNamespace(**c["args"])
    if c["arch"] == "msdnet":
        path = os.environ.get("ANYTIME_REF_MSDNET")
        if not path:
            return None
        mod = load(path, "msdnet")
        stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")
        model = mod.MSDNet(a)
        sys.stdout = stdout
    elif c["arch"] == "gfnet":
        # GFNet's MobileNetV3-Large (its vendored gen-efficientnet 0.9.8) at
        # the configured multiplier, a whole network with its classifier.
        path = os.environ.get("ANYTIME_REF_GFNET")
        if not path or not a.model_arch.startswith("mobilenetv3"):
            return None
        import collections.abc
        if "torch._six" not in sys.modules:
            six = types.ModuleType("torch._six")
            six.container_abcs = collections.abc
            six.string_classes = (str, bytes)
            six.int_classes = int
            sys.modules["torch._six"] = six
        sys.path.insert(0, os.path.abspath(path))
        import models.mobilenetv3 as m3
        stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")
        net = m3._gen_mobilenet_v3("mobilenetv3_large_100", a.channel_multiplier, num_classes=a.num_classes)
        sys.stdout = stdout

        class Classified(torch.nn.Module):
            """forward returns (feature, map); the logits are classifier(feature)."""
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return [self.net.classifier(self.net(x)[0])]

        model = Classified(net)
    elif c["arch"] == "scan":
        path = os.environ.get("ANYTIME_REF_SCAN")
        if not path:
            return None
        spec = importlib.util.spec_from_file_location("sresnet", os.path.join(path, "sresnet.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        block = mod.BasicBlock if a.block == "basic" else mod.Bottleneck
        stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")
        net = mod.ResNet(block, a.layers, num_classes=a.num_classes)
        sys.stdout = stdout

        class Exits(torch.nn.Module):
            """The reference returns (exits deepest first, feature loss)."""
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)[0]

        model = Exits(net)
    else:
        path = os.environ.get("ANYTIME_REF_RANET")
        if not path:
            return None
        model = load(path, "RANet").RANet(a)
    x = torch.randn(c["n"], 3, c["hw"], c["hw"])
    y = torch.randint(0, 10, (c["n"],))
    if c["mode"] == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        def run():
            opt.zero_grad()
            loss = sum(F.cross_entropy(o, y) for o in model(x))
            loss.backward()
            opt.step()
        return run
    model.eval()
    if c["mode"] == "exit":
        # The reference forward, stopped after classifier k (MSDNet only).
        if c["arch"] != "msdnet":
            return None
        k = c["exit"]
        def run():
            with torch.no_grad():
                h = x
                for i in range(k + 1):
                    h = model.blocks[i](h)
                    model.classifier[i](h)
        return run
    def run():
        with torch.no_grad():
            model(x)
    return run


def build(c):
    fn = {"conv": conv_case, "bn": bn_case, "dense": dense_stack, "inverted_residual": inverted_residual,
          "model": model_case}.get(c["kind"])
    return fn(c) if fn else None


def status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/self/status")


if MEMORY:
    # One case in this process: run it three times, print its peak resident
    # memory in MiB, less the resident size of Python with torch imported
    # (importing torch peaks above most cases on its own); the high-water
    # mark restarts from the current size first (Linux, clear_refs value 5).
    base = status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run = build(next(c for c in cases if c["name"] == ARGS[2]))
    if run is None:
        sys.exit(1)
    for _ in range(3):
        run()
    print(status_mib("VmHWM") - base)
elif SERVE:
    by_name = {c["name"]: c for c in cases}
    built = {}
    for line in sys.stdin:
        name = line.rstrip("\n")
        if name not in built:
            built[name] = build(by_name[name]) if name in by_name else None
        run = built[name]
        print(json.dumps({"name": name, "seconds": timeit(run) if run else None}), flush=True)
else:
    out = {}
    for c in cases:
        run = build(c)
        out[c["name"]] = timeit(run) if run else None
    print(json.dumps(out))
