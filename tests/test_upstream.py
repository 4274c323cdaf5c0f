"""Every private FastReID internal the package uses is behind one shim in
:mod:`fastreid_plugins.upstream`; this test fails loudly, naming the internal, when an upgrade
drops one."""

import pytest

import fastreid_plugins  # noqa: F401
from fastreid_plugins import upstream


def test_every_internal_exists_in_the_installed_fastreid():
    assert upstream.check_all() == list(upstream.INTERNALS)


def test_a_dropped_internal_is_named(monkeypatch):
    from fastreid.utils import events
    monkeypatch.delattr(events, "_CURRENT_STORAGE_STACK")
    with pytest.raises(upstream.UpstreamChangedError,
                       match=r"fastreid\.utils\.events\._CURRENT_STORAGE_STACK.*1\.4\.0"):
        upstream.check_all()
    with pytest.raises(upstream.UpstreamChangedError, match="_CURRENT_STORAGE_STACK"):
        upstream.event_storage_active()


def test_shims_do_what_fastreid_does():
    from fastreid.data.samplers import NaiveIdentitySampler
    from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
    from fastreid.utils.events import EventStorage
    assert not upstream.event_storage_active()
    with EventStorage(0):
        assert upstream.event_storage_active()
    assert "Baseline" in upstream.registry_names(META_ARCH_REGISTRY)
    with pytest.raises(KeyError, match="NoSuchArch"):
        upstream.registry_replace(META_ARCH_REGISTRY, "NoSuchArch", object)
    items = [(f"{i}.jpg", i % 4, 0) for i in range(16)]
    s = NaiveIdentitySampler(items, 8, 2, seed=1)
    upstream.set_sampler_seed(s, 7)
    assert s._seed == 7
    with pytest.raises(upstream.UpstreamChangedError, match="_seed"):
        upstream.set_sampler_seed(object(), 7)


def test_onnx_exporter_internals_exist_and_a_missing_one_is_named(monkeypatch):
    from fastreid_plugins.deploy import onnx as export_onnx
    sh = export_onnx._symbolic_helper()
    for name in export_onnx.ONNX_INTERNALS:
        assert callable(getattr(sh, name)), name
    monkeypatch.delattr(sh, "_get_tensor_sizes")
    with pytest.raises(upstream.UpstreamChangedError, match="_get_tensor_sizes"):
        export_onnx._symbolic_helper()
