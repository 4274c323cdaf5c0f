"""Pretrained backbone weights (fastreid_plugins.modeling.pretrained): published files load strictly
into FastReID's builders and every branch copy; wrong files fail naming the file; downloads work
(local HTTP server on 127.0.0.1) and offline mode never opens a socket.

The "published" files are built from the published *architectures*, never from our model:
torchvision's ResNet classes, and IBN-Net's layer layout written below from its reference code
(XingangPan/IBN-Net, ``ibnnet/modules.py``, ``resnet_ibn.py``, ``resnext_ibn.py``,
``se_resnet_ibn.py``, read at commits d167338 / e79b2aa). They are filled with seeded random
values, so a tensor that did not come from the file cannot equal it.
"""

import hashlib
import http.server
import logging
import math
import os
import socket
import threading

import pytest
import torch
import torchvision
from fastreid.modeling import build_model
from fastreid.modeling.backbones import build_backbone, resnet, resnext
from fastreid.modeling.backbones.resnet import BasicBlock, Bottleneck
from fastreid.modeling.backbones.resnext import Bottleneck as XBottleneck
from torch import nn

import fastreid_plugins  # noqa: F401  (patches: our builders in FastReID's registry)
from fastreid_plugins.mbfn import add_mbfn_config
from fastreid_plugins.mfgnet import add_mfgnet_config
from fastreid_plugins.modeling import pretrained
from fastreid_plugins.modeling.pretrained import (
    WeightsMismatchError,
    WeightsNotAvailableError,
    is_offline,
    resolve_weights_file,
)
from fastreid_plugins.svrn import add_svrn_config
from tests.helpers import make_cfg


# --------------------------------------------------------------------------------------------
# IBN-Net's reference architecture (names and layout as in XingangPan/IBN-Net ibnnet/*.py)
# --------------------------------------------------------------------------------------------
class RefIBN(nn.Module):  # ibnnet/modules.py IBN(planes, ratio=0.5)
    def __init__(self, planes, ratio=0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)


class RefSELayer(nn.Module):  # ibnnet/modules.py SELayer(channel, reduction=16)
    def __init__(self, channel, reduction=16):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channel, int(channel / reduction), bias=False),
                                nn.ReLU(inplace=True),
                                nn.Linear(int(channel / reduction), channel, bias=False),
                                nn.Sigmoid())


class RefBottleneckIBN(nn.Module):
    """resnet_ibn.Bottleneck_IBN / se_resnet_ibn.SEBottleneck_IBN / resnext_ibn.Bottleneck_IBN."""
    expansion = 4

    def __init__(self, inplanes, planes, ibn=None, stride=1, downsample=None, se=False,
                 base_width=None, cardinality=1):
        super().__init__()
        width = (planes if base_width is None
                 else int(math.floor(planes * (base_width / 64))) * cardinality)
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = RefIBN(width) if ibn == "a" else nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        if se:
            self.se = RefSELayer(planes * 4, 16)
        self.downsample = downsample


class RefResNetIBN(nn.Module):
    """resnet_ibn.ResNet_IBN / se_resnet_ibn.ResNet_IBN / resnext_ibn.ResNeXt_IBN with
    ``ibn_cfg=('a', 'a', 'a', None)``: IBN in layer1-3, plain BatchNorm in layer4."""

    def __init__(self, layers, ibn_cfg=("a", "a", "a", None), se=False, base_width=None,
                 cardinality=1):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        kw = {"se": se, "base_width": base_width, "cardinality": cardinality}
        for i, (planes, n, ibn) in enumerate(zip((64, 128, 256, 512), layers, ibn_cfg)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or self.inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                     nn.BatchNorm2d(planes * 4))
            blocks = [RefBottleneckIBN(self.inplanes, planes, ibn, stride, down, **kw)]
            self.inplanes = planes * 4
            blocks += [RefBottleneckIBN(self.inplanes, planes, ibn, **kw) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(512 * 4, 1000)


def ibnnet(name):
    """IBN-Net's published models, by their model_urls name."""
    return {
        "resnet50_ibn_a": lambda: RefResNetIBN([3, 4, 6, 3]),
        "resnet101_ibn_a": lambda: RefResNetIBN([3, 4, 23, 3]),
        "se_resnet101_ibn_a": lambda: RefResNetIBN([3, 4, 23, 3], se=True),
        "resnext50_ibn_a": lambda: RefResNetIBN([3, 4, 6, 3], base_width=4, cardinality=32),
        "resnext101_ibn_a": lambda: RefResNetIBN([3, 4, 23, 3], base_width=4, cardinality=32),
    }[name]()


def random_state(make, seed=0, counters=False):
    """Seeded random values for every tensor of the architecture ``make()`` (built on meta).

    Tensor i is a window of one seeded Gaussian vector plus i: random within a tensor, distinct
    across tensors (so a value loaded into the wrong place cannot match), cheap at ResNet-101 size.
    """
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in make().state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(max(s.numel() for s in shapes.values()) + len(shapes), generator=g)
    out = {}
    for i, (k, shape) in enumerate(shapes.items()):
        if k.endswith("num_batches_tracked"):
            if counters:
                out[k] = torch.tensor(1000 + i)
            continue
        t = base[i:i + shape.numel()].view(shape) + i
        out[k] = t.abs() + 0.5 if k.endswith("running_var") else t.clone()
    return out


def backbone_cfg(name="build_resnet_backbone", depth="18x", ibn=False, se=False, path="", opts=()):
    return make_cfg("configs/demo/bagtricks_r18.yml",
                    ["MODEL.BACKBONE.NAME", name, "MODEL.BACKBONE.DEPTH", depth,
                     "MODEL.BACKBONE.WITH_IBN", ibn, "MODEL.BACKBONE.WITH_SE", se,
                     "MODEL.BACKBONE.PRETRAIN", True, "MODEL.BACKBONE.PRETRAIN_PATH", str(path),
                     *opts])


def assert_all_arrive(model, state, path, caplog):
    """Every tensor of ``model`` (less BN counters) equals the file's; every file tensor but fc.*
    is used; the log line says so."""
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    want = {k: v for k, v in state.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(own) == set(want)
    bad = [k for k in own if not torch.equal(own[k], want[k])]
    assert not bad, f"{len(bad)} tensors did not arrive, e.g. {bad[:3]}"
    for k, v in state.items():  # counters the file has arrive too
        if k.endswith("num_batches_tracked"):
            assert int(model.state_dict()[k]) == int(v)
    assert f"loaded {len(own)}/{len(own)} tensors from {path}" in caplog.text


@pytest.fixture
def info_log(caplog):
    caplog.set_level(logging.INFO, logger="fastreid_plugins.modeling.pretrained")
    return caplog


# --------------------------------------------------------------------------------------------
# Published layouts
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("depth, make", [
    ("18x", torchvision.models.resnet18), ("34x", torchvision.models.resnet34),
    ("50x", torchvision.models.resnet50), ("101x", torchvision.models.resnet101)])
def test_torchvision_resnets_load_strictly(tmp_path, info_log, depth, make):
    """resnetXX-<hash>.pth as published (2017: legacy serialization, no num_batches_tracked)."""
    state = random_state(make, seed=int(depth[:-1]))
    path = tmp_path / f"resnet{depth[:-1]}.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    model = build_backbone(backbone_cfg(depth=depth, path=path))
    assert_all_arrive(model, state, path, info_log)
    assert "dropped fc.bias, fc.weight" in info_log.text


@pytest.mark.slow
@pytest.mark.parametrize("name, depth, se", [
    ("resnet50_ibn_a", "50x", False), ("resnet101_ibn_a", "101x", False),
    ("se_resnet101_ibn_a", "101x", True)])
def test_ibnnet_resnets_load_strictly(tmp_path, info_log, name, depth, se):
    state = random_state(lambda: ibnnet(name), seed=len(name), counters=True)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    model = build_backbone(backbone_cfg(depth=depth, ibn=True, se=se, path=path))
    assert_all_arrive(model, state, path, info_log)


def test_ibnnet_resnext101_loads_into_clip_senet_backbone(tmp_path, info_log):
    """CLIP-SENet's ResNeXt101-IBN (paper config) is IBN-Net's network: resnext101_ibn_a loads."""
    from fastreid_plugins.clip_senet import add_clip_senet_config, build_cnn_backbone
    state = random_state(lambda: ibnnet("resnext101_ibn_a"), seed=101)
    path = tmp_path / "resnext101_ibn_a-6ace051d.pth"
    torch.save(state, path)
    cfg = make_cfg("configs/veri/clip_senet.yml", ["MODEL.BACKBONE.PRETRAIN_PATH", str(path)],
                   [add_clip_senet_config])
    model = build_cnn_backbone(cfg)
    assert_all_arrive(model, state, path, info_log)
    assert all(type(b.bn1).__name__ == "BatchNorm" for b in model.layer4)      # plain BN in conv5_x
    assert all(type(b.bn1).__name__ == "IBN" for b in model.layer3)


def test_fastreid_own_backbone_files_load(tmp_path, info_log):
    """FastReID's formats: a saved FastReID backbone (counters included) and the
    ``{"model": {"module.encoder.<key>"}}`` file FastReID's ResNeXt builder reads."""
    cfg = backbone_cfg(depth="18x", opts=["MODEL.BACKBONE.PRETRAIN", False])
    torch.manual_seed(3)
    src = build_backbone(cfg)
    state = random_state(lambda: src, seed=3, counters=True)
    torch.save(state, tmp_path / "fastreid_r18.pth")
    model = build_backbone(backbone_cfg(depth="18x", path=tmp_path / "fastreid_r18.pth"))
    assert_all_arrive(model, state, tmp_path / "fastreid_r18.pth", info_log)

    xstate = random_state(lambda: ibnnet("resnext50_ibn_a"), seed=50)
    torch.save({"model": {"module.encoder." + k: v for k, v in xstate.items()}}, tmp_path / "x.pth")
    model = build_backbone(backbone_cfg("build_resnext_backbone", "50x", ibn=True,
                                        path=tmp_path / "x.pth"))
    assert_all_arrive(model, xstate, tmp_path / "x.pth", info_log)


# --------------------------------------------------------------------------------------------
# Every branch copy
# --------------------------------------------------------------------------------------------
def _block_prefix(block, state):
    """The ``layerX.Y.`` of the file block whose conv1 weight ``block`` holds (None if none)."""
    w = block.conv1.weight
    hits = [k[:-len("conv1.weight")] for k, v in state.items()
            if k.endswith(".conv1.weight") and k.startswith("layer") and v.shape == w.shape
            and torch.equal(v, w)]
    return hits[0] if hits else None


def assert_every_copy_loaded(model, state):
    """Every ResNet block in ``model`` (trunk, backbone and each branch copy) is a complete copy of
    one file block, every file block is used, and the stem is the file's."""
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck))]
    used = {}
    for name, blk in blocks:
        prefix = _block_prefix(blk, state)
        assert prefix is not None, f"{name} holds no block of the file (random weights?)"
        own = {k: v for k, v in blk.state_dict().items() if not k.endswith("num_batches_tracked")}
        file = {k[len(prefix):]: v for k, v in state.items()
                if k.startswith(prefix) and not k.endswith("num_batches_tracked")}
        assert set(own) == set(file), name
        assert all(torch.equal(v, file[k]) for k, v in own.items()), f"{name} != file {prefix}"
        used.setdefault(prefix, []).append(name)
    file_blocks = {k.split(".")[0] + "." + k.split(".")[1] + "." for k in state
                   if k.startswith("layer")}
    assert set(used) == file_blocks
    stems = [m for m in model.modules()
             if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.kernel_size == (7, 7)]
    assert stems and all(torch.equal(m.weight, state["conv1.weight"]) for m in stems)
    return used


# MFG-Net / MBFN: the MGN-style split (own layer3[1:] + layer4 per branch); with their default,
# the papers' split after conv5, the branches own no backbone block (tests/test_parts.py)
@pytest.mark.parametrize("config, add_fn, opts", [
    ("configs/demo/mfgnet.yml", add_mfgnet_config, ["MODEL.MFGNET.SPLIT_AT", "layer3.1"]),
    ("configs/demo/mbfn.yml", add_mbfn_config, ["MODEL.MBFN.SPLIT_AT", "layer3.1"]),
    ("configs/demo/svrn.yml", add_svrn_config, [])])
def test_every_branch_copy_gets_the_weights(tmp_path, config, add_fn, opts):
    state = random_state(torchvision.models.resnet18, seed=18)
    torch.save(state, tmp_path / "resnet18.pth")
    cfg = make_cfg(config, ["MODEL.BACKBONE.PRETRAIN", True, "MODEL.BACKBONE.PRETRAIN_PATH",
                            str(tmp_path / "resnet18.pth"), "MODEL.HEADS.NUM_CLASSES", 4] + opts,
                   [add_fn])
    used = assert_every_copy_loaded(build_model(cfg), state)
    assert max(len(v) for v in used.values()) >= 2  # the branches' own copies were checked too


# --------------------------------------------------------------------------------------------
# Wrong files
# --------------------------------------------------------------------------------------------
def test_resnet18_file_for_resnet50_fails_naming_file(tmp_path):
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(random_state(torchvision.models.resnet18), path)
    with pytest.raises(WeightsMismatchError) as e:
        build_backbone(backbone_cfg(depth="50x", path=path))
    msg = str(e.value)
    assert str(path) in msg and "MODEL.BACKBONE.PRETRAIN_PATH" in msg
    assert "the file holds ResNet-18" in msg and "the model is ResNet-50" in msg
    assert "layer1.0.conv3.weight" in msg and "shape mismatch" in msg


def test_full_model_checkpoint_as_pretrain_path_fails(tmp_path):
    cfg = make_cfg("configs/demo/bagtricks_r18.yml", ["MODEL.HEADS.NUM_CLASSES", 4])
    full = {"model": build_model(cfg).state_dict(), "iteration": 10}
    torch.save(full, tmp_path / "model_final.pth")
    with pytest.raises(WeightsMismatchError, match="full-model checkpoint") as e:
        build_backbone(backbone_cfg(depth="18x", path=tmp_path / "model_final.pth"))
    assert str(tmp_path / "model_final.pth") in str(e.value) and "MODEL.WEIGHTS" in str(e.value)


def test_ibn_layout_mismatch_names_the_switch(tmp_path):
    """IBN-Net's ResNeXt file into FastReID's own layout (IBN in layer4) fails and says why."""
    path = tmp_path / "resnext50_ibn_a.pth"
    torch.save(random_state(lambda: ibnnet("resnext50_ibn_a")), path)
    with pytest.raises(WeightsMismatchError) as e:
        build_backbone(backbone_cfg("build_resnext_backbone", "50x", ibn=True, path=path,
                                    opts=["MODEL.BACKBONE.IBN_LAYOUT", "fastreid"]))
    msg = str(e.value)
    assert str(path) in msg and 'IBN_LAYOUT "ibnnet"' in msg
    assert "layer4.0.bn1.IN.weight" in msg and "layer4.0.bn1.weight" in msg
    # FastReID's layout is still buildable: the original network, IBN in layer4
    model = build_backbone(backbone_cfg("build_resnext_backbone", "50x", ibn=True,
                                        opts=["MODEL.BACKBONE.PRETRAIN", False,
                                              "MODEL.BACKBONE.IBN_LAYOUT", "fastreid"]))
    assert type(model.layer4[0].bn1).__name__ == "IBN" and isinstance(model.layer4[0], XBottleneck)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(WeightsNotAvailableError, match="nope.pth") as e:
        build_backbone(backbone_cfg(depth="50x", path=tmp_path / "nope.pth"))
    assert "resnet50-19c8e357.pth" in str(e.value) and isinstance(e.value, FileNotFoundError)
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(WeightsMismatchError, match="trunc.pth"):
        build_backbone(backbone_cfg(depth="18x", path=tmp_path / "trunc.pth"))


# --------------------------------------------------------------------------------------------
# Downloads (local HTTP server) and offline mode
# --------------------------------------------------------------------------------------------
@pytest.fixture
def online(monkeypatch, tmp_path):
    """Online mode with a private torch.hub cache; returns the cache folder."""
    for v in pretrained.OFFLINE_ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert not is_offline()
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def server(tmp_path):
    """``(www folder, base URL, list of requested paths)`` of an HTTP server on 127.0.0.1."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{srv.server_address[1]}", requests
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def publish(www, state, stem="resnet18", corrupt=False):
    """Save ``state`` into ``www`` under torch.hub's ``<stem>-<sha256 prefix>.pth`` name."""
    tmp = www / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"{stem}-{'0' * 8 if corrupt or digest.startswith('0' * 8) else digest[:8]}.pth"
    os.replace(tmp, www / name)
    return name


def test_download_once_into_cache_then_reuse(online, server, monkeypatch, info_log):
    www, base, requests = server
    state = random_state(torchvision.models.resnet18, seed=7)
    name = publish(www, state)
    monkeypatch.setitem(resnet.model_urls, "18x", f"{base}/{name}")
    cfg = backbone_cfg(depth="18x")  # PRETRAIN True, PRETRAIN_PATH ""
    for _ in range(2):
        model = build_backbone(cfg)
        assert_all_arrive(model, state, online / name, info_log)
    assert requests == [f"/{name}"]  # fetched once, then found in the torch.hub cache
    assert sorted(os.listdir(online)) == [name]


def test_corrupt_download_is_deleted_and_reported(online, server):
    www, base, requests = server
    name = publish(www, random_state(torchvision.models.resnet18), corrupt=True)
    url = f"{base}/{name}"
    with pytest.raises(WeightsNotAvailableError, match="corrupt") as e:
        resolve_weights_file(url, "", progress=False)
    msg = str(e.value)
    assert url in msg and str(online) in msg and "PRETRAIN_PATH" in msg and "00000000" in msg
    assert requests == [f"/{name}"] and os.listdir(online) == []  # nothing left behind


def test_unreachable_server_is_a_clear_error(online):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet50-19c8e357.pth"
    with pytest.raises(WeightsNotAvailableError, match="could not download") as e:
        resolve_weights_file(url, "", progress=False)
    msg = str(e.value)
    assert url in msg and str(online) in msg and "MODEL.BACKBONE.PRETRAIN_PATH" in msg
    assert "FASTREID_PLUGINS_OFFLINE" in msg


def test_stalled_server_times_out_with_a_clear_error(online, monkeypatch):
    # a server that accepts the connection and never answers: torch.hub alone would wait forever
    monkeypatch.setenv(pretrained.DOWNLOAD_TIMEOUT_ENV, "1")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)  # the kernel completes the handshake; nobody ever reads or writes
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/resnet50-19c8e357.pth"
        outcome = []

        def fetch():
            try:
                resolve_weights_file(url, "", progress=False)
            except Exception as e:  # noqa: BLE001 - handed to the main thread
                outcome.append(e)

        worker = threading.Thread(target=fetch, daemon=True)
        worker.start()
        worker.join(30)
    assert not worker.is_alive(), "the download of a stalled server did not time out"
    assert len(outcome) == 1 and isinstance(outcome[0], WeightsNotAvailableError), outcome
    msg = str(outcome[0])
    assert url in msg and "sent nothing for 1 s" in msg and pretrained.DOWNLOAD_TIMEOUT_ENV in msg
    assert not os.path.isdir(online) or os.listdir(online) == []  # nothing left behind
    assert socket.getdefaulttimeout() is None  # restored


@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf"])
def test_bad_download_timeout_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(pretrained.DOWNLOAD_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=pretrained.DOWNLOAD_TIMEOUT_ENV):
        pretrained.download_timeout()


@pytest.fixture
def socket_trap(monkeypatch):
    """Every DNS look-up or socket connection is recorded in the returned list and fails."""
    opened = []

    def no_network(*a, **kw):
        opened.append(a)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return opened


@pytest.mark.parametrize("env", pretrained.OFFLINE_ENV_VARS)
def test_offline_never_opens_a_socket(online, monkeypatch, socket_trap, env):
    opened = socket_trap
    monkeypatch.setenv(env, "1")
    assert is_offline()
    with pytest.raises(WeightsNotAvailableError) as e:
        build_backbone(backbone_cfg(depth="50x"))
    msg = str(e.value)
    for part in ("resnet50-19c8e357.pth", resnet.model_urls["50x"], str(online),
                 "MODEL.BACKBONE.PRETRAIN_PATH", f"{env}=1"):
        assert part in msg
    # a cached file is used offline
    online.mkdir(parents=True)
    state = random_state(torchvision.models.resnet18)
    torch.save(state, online / "resnet18-5c106cde.pth")
    model = build_backbone(backbone_cfg(depth="18x"))
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert opened == []


def test_no_published_file_for_the_architecture():
    """ResNeXt-50-IBN: FastReID names no file; empty PRETRAIN_PATH says so, nothing is fetched."""
    with pytest.raises(WeightsNotAvailableError, match="no published ImageNet weights"):
        build_backbone(backbone_cfg("build_resnext_backbone", "50x", ibn=True))
    assert resnext.model_urls["ibn_101x"].endswith("resnext101_ibn_a-6ace051d.pth")


@pytest.mark.parametrize("local_rank", [0, 1])
def test_ddp_one_process_per_machine_fetches_and_all_meet_once(online, server, monkeypatch,
                                                               local_rank):
    """Under DDP local rank 0 looks up / downloads, then releases the others at one barrier; the
    others fetch nothing and read the cache (both roles simulated: no process group on CPU)."""
    from fastreid.utils import comm
    www, base, requests = server
    name = publish(www, random_state(torchvision.models.resnet18, seed=5))
    barriers = []
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_local_rank", lambda: local_rank)
    monkeypatch.setattr(comm, "synchronize", lambda: barriers.append(len(requests)))
    if local_rank == 0:
        path = resolve_weights_file(f"{base}/{name}", "", progress=False)
        assert requests == [f"/{name}"] and barriers == [1]  # released after the download
        with pytest.raises(WeightsNotAvailableError):  # released after a failure too
            resolve_weights_file(f"{base}/missing-12345678.pth", "", progress=False)
        assert len(barriers) == 2
    else:
        with pytest.raises(WeightsNotAvailableError, match="local rank 0"):
            resolve_weights_file(f"{base}/{name}", "", progress=False)  # rank 0 provided nothing
        online.mkdir(parents=True)
        (online / name).write_bytes((www / name).read_bytes())
        path = resolve_weights_file(f"{base}/{name}", "", progress=False)
        assert requests == [] and barriers == [0, 0]
    assert path == str(online / name)


def test_osnet_offline_is_a_clear_error_where_fastreid_goes_online(online, monkeypatch,
                                                                    socket_trap):
    """OSNet's weights stay FastReID's (gdown, Google Drive), but offline mode stops them too."""
    from fastreid_plugins import patches
    opened = socket_trap
    monkeypatch.setenv("FASTREID_PLUGINS_OFFLINE", "1")
    cfg = backbone_cfg("build_osnet_backbone", "x0_25")
    with pytest.raises(WeightsNotAvailableError, match="osnet_x0_25_imagenet.pth"):
        build_backbone(cfg)
    assert opened == []
    with pytest.raises(Exception):  # FastReID's own function ignores offline mode: it goes online
        patches.ORIGINALS["osnet.init_pretrained_weights"](None, "osnet_x0_25")
    assert opened
