"""GAP (opomjax.core.gap, opomjax.pipeline.gap): the mask stays within ε, an Adam step lowers the loss, the
checkpoint round-trips, a resumed training equals an uninterrupted one bit for bit, and the pipeline's method
``gap`` writes masks the evaluation scores. Tiny random-weight models on synthetic data."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import gap as gap_configs
from opomjax import frame
from opomjax.core import gap
from opomjax.core import objectives
from opomjax.models import base
from opomjax.pipeline import gap as gap_pipeline
from opomjax.pipeline import masks, runner, settings, validate

TINY = gap.GapConfig(epsilon=8.0, features=4, num_blocks=1, learning_rate=1e-2)


def linear_embed(params, images):
  """A linear 'face model' ``(b, 16, 16, 3) -> (b, 8)`` (raw features; the objective normalises them)."""
  return (images.reshape(images.shape[0], -1) / 255.0) @ params


def toy_setup(tiny_generator, seed: int = 0, batch: int = 6):
  """(noise, generator weights, images, their clean features, the linear surrogate's weights)."""
  keys = jax.random.split(jax.random.key(seed), 4)
  noise, params = tiny_generator[(16, 16)]
  images = jax.random.uniform(keys[1], (batch, 16, 16, 3), jnp.float32, 0.0, 255.0)
  surrogate = jax.random.normal(keys[2], (16 * 16 * 3, 8))
  return noise, params, images, linear_embed(surrogate, images), surrogate


@pytest.fixture(scope="module")
def tiny_generator():
  """``{size: (noise, params)}`` of :data:`TINY`'s generator (ε, scaling and Adam do not change its weights;
  initialising them is the slow part of these tests, so it is done once)."""
  out = {}
  for size in ((32, 24), (16, 16)):
    noise = gap.fixed_noise(jax.random.key(0), size)
    out[size] = noise, gap.init_generator(jax.random.key(1), noise, TINY)
  return out


@pytest.mark.parametrize("scaling", gap.SCALINGS)
@pytest.mark.parametrize("epsilon", [2.0, 8.0])
def test_generator_mask_respects_epsilon(scaling, epsilon, tiny_generator):
  cfg = gap.GapConfig(epsilon=epsilon, scaling=scaling, features=4, num_blocks=1)
  noise, params = tiny_generator[(32, 24)]
  mask_fn = jax.jit(gap.universal_mask, static_argnums=2)  # one program, not one per operation
  delta = np.asarray(mask_fn(params, noise, cfg))
  assert delta.shape == (32, 24, 3)
  assert np.abs(delta).max() <= epsilon * (1 + 1e-6)
  if scaling == "linf":  # GAP's scaling puts every channel's largest magnitude exactly at ε
    np.testing.assert_allclose(np.abs(delta).max(axis=(0, 1)), epsilon, rtol=1e-5)
  big = jax.tree.map(lambda p: 100.0 * p, params)  # saturated outputs stay within the budget too
  assert np.abs(np.asarray(mask_fn(big, noise, cfg))).max() <= epsilon * (1 + 1e-6)


def test_linf_scaling_only_scales_down():
  raw = 1e-4 * jax.random.normal(jax.random.key(0), (8, 8, 3))  # 127.5 tanh(raw) is far below ε
  np.testing.assert_allclose(gap.scale_linf(raw, 8.0), gap.PIXEL_HALF_RANGE * np.tanh(np.asarray(raw)), rtol=1e-6)
  raw = jnp.ones((4, 4, 3)).at[0, 0, 1].set(-3.0)
  delta = np.asarray(gap.scale_linf(raw, 8.0))
  peak = gap.PIXEL_HALF_RANGE * np.tanh(3.0)
  np.testing.assert_allclose(delta[..., 1], gap.PIXEL_HALF_RANGE * np.tanh(np.asarray(raw[..., 1])) * 8.0 / peak,
                             rtol=1e-6)  # per channel, by that channel's own peak
  np.testing.assert_allclose(delta[..., 0], 8.0, rtol=1e-6)


def test_gap_loss_is_minus_fi_uap_and_ignores_padding(tiny_generator):
  noise, params, images, clean, surrogate = toy_setup(tiny_generator)
  loss = jax.jit(functools.partial(gap.gap_loss, embed_fn=linear_embed, cfg=TINY))
  delta = jax.jit(gap.universal_mask, static_argnums=2)(params, noise, TINY)
  adv = linear_embed(surrogate, jnp.clip(images + delta, 0, 255))
  reference = -objectives.fi_uap(adv, clean)  # Eq. 17 over the batch
  np.testing.assert_allclose(loss(params, noise, images, clean, jnp.ones(6), surrogate), reference, rtol=1e-5)
  # Rows of weight 0 (the padding of an epoch's last batch) change nothing.
  junk = jnp.concatenate([images[:4], jnp.zeros_like(images[:2])])
  np.testing.assert_allclose(
      loss(params, noise, junk, clean, jnp.array([1, 1, 1, 1, 0, 0.0]), surrogate),
      loss(params, noise, images[:4], clean[:4], jnp.ones(4), surrogate), rtol=1e-5)


@pytest.mark.parametrize("scaling", gap.SCALINGS)
def test_one_adam_step_lowers_the_loss_on_a_fixed_batch(scaling, tiny_generator):
  cfg = gap.GapConfig(epsilon=8.0, scaling=scaling, features=4, num_blocks=1, learning_rate=1e-3)
  noise, params, images, clean, surrogate = toy_setup(tiny_generator)
  weights = jnp.ones(images.shape[0])
  state = gap.TrainState(params, gap.optimizer(cfg).init(params), jnp.zeros((), jnp.int32))
  new, before = jax.jit(functools.partial(gap.train_step, embed_fn=linear_embed, cfg=cfg))(
      state, noise, images, clean, weights, surrogate)
  after = gap.gap_loss(new.params, noise, images, clean, weights, surrogate, embed_fn=linear_embed, cfg=cfg)
  np.testing.assert_allclose(before, gap.gap_loss(state.params, noise, images, clean, weights, surrogate,
                                                  embed_fn=linear_embed, cfg=cfg), rtol=1e-4)
  assert int(new.step) == 1
  assert float(after) < float(before), (float(before), float(after))


# --- the pipeline: checkpoints, resume, the method "gap" of the experiment configs ---------------------------


def toy_model():
  """A linear face model on 16x16 inputs (canonical images are resampled into it)."""
  tiny = frame.make_frame("toy16", (16, 16), frame.CANONICAL.landmarks_array * 16 / 128)

  def net(params, x, key=None, dropout_rate=0.0):
    del key, dropout_rate
    flat = x.reshape(x.shape[0], -1) / 255.0
    return flat @ params["w"], [flat]

  return base.FaceModel("toy", net, {"w": jax.random.normal(jax.random.key(0), (16 * 16 * 3, 8))}, tiny, 8)


def toy_config(**gap_fields):
  """The gap config on 4 synthetic identities (2 training photos each), a tiny generator, 2 epochs of 3
  batches of 3 (the last one padded)."""
  config = gap_configs.get_config("dlib")
  config.update_from_flattened_dict({
      "dataset.name": "synthetic", "dataset.num_identities": 4, "targets": "dlib_resnet",
      "gap.features": 2, "gap.blocks": 0, "gap.epochs": 2, "gap.batch_size": 3, "gap.learning_rate": 1e-2,
      **{f"gap.{k}": v for k, v in gap_fields.items()}})
  return config


def toy_protocol():
  return runner.synthetic_protocol(4, seed=0)


@pytest.fixture
def toy_runner(monkeypatch):
  monkeypatch.setattr(runner, "load_surrogate", lambda config: toy_model())
  monkeypatch.setattr(runner.opomjax, "load_target", lambda name, **kw: toy_model())


def test_checkpoint_roundtrip_and_refusals(tmp_path, tiny_generator):
  noise, params, *_ = toy_setup(tiny_generator)
  opt_state = gap.optimizer(TINY).update(jax.tree.map(jnp.ones_like, params), gap.optimizer(TINY).init(params))[1]
  state = gap.TrainState(params, opt_state, jnp.asarray(7, jnp.int32))  # a non-zero Adam state
  data_key = jax.random.PRNGKey(5)
  path = tmp_path / gap_pipeline.CHECKPOINT
  record = {"method": "gap", "epochs": 3}
  gap_pipeline.save_checkpoint(path, state, 2, data_key, record)
  template = gap.TrainState(jax.tree.map(jnp.zeros_like, params), gap.optimizer(TINY).init(params),
                            jnp.zeros((), jnp.int32))  # other values, same structure
  restored, epoch, restored_key = gap_pipeline.restore_checkpoint(path, template, jax.random.PRNGKey(0), record)
  assert epoch == 2 and int(restored.step) == 7
  np.testing.assert_array_equal(restored_key, data_key)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  with pytest.raises(settings.SettingsMismatchError, match="epochs: 3 in the masks, 4 now"):
    gap_pipeline.restore_checkpoint(path, template, data_key, {**record, "epochs": 4})
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match="unreadable GAP checkpoint"):
    gap_pipeline.restore_checkpoint(path, template, data_key, record)


def test_minibatches_visit_every_photo_once_per_epoch():
  order = np.random.default_rng(0).permutation(8)
  batches = list(gap_pipeline.minibatches(order, 3))
  assert [len(i) for i, _ in batches] == [3, 3, 3]
  np.testing.assert_array_equal(np.concatenate([i[w > 0] for i, w in batches]), order)


@pytest.mark.slow
def test_resumed_training_equals_an_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
  protocol, model, config = toy_protocol(), toy_model(), toy_config()
  gap_pipeline.train(config, protocol, model, tmp_path / "whole", show_progress=False)
  whole = (tmp_path / "whole" / gap_pipeline.CHECKPOINT).read_bytes()

  real_save = gap_pipeline.save_checkpoint
  saved = []

  def crash_after_first_epoch(path, state, epoch, data_key, record):
    real_save(path, state, epoch, data_key, record)
    saved.append(epoch)
    if epoch == 1:
      raise KeyboardInterrupt  # Ctrl-C right after the first checkpoint

  monkeypatch.setattr(gap_pipeline, "save_checkpoint", crash_after_first_epoch)
  with pytest.raises(KeyboardInterrupt):
    gap_pipeline.train(config, protocol, model, tmp_path / "resumed", show_progress=False)
  assert not (tmp_path / "resumed" / "masks").exists()
  summary = gap_pipeline.train(config, protocol, model, tmp_path / "resumed", show_progress=False)
  assert saved == [1, 2] and summary["generated"] == 4  # the rerun trained epoch 2 only
  assert (tmp_path / "resumed" / gap_pipeline.CHECKPOINT).read_bytes() == whole
  for name in protocol.names:
    a, meta = masks.load_identity_mask(tmp_path / "whole", name)
    b, _ = masks.load_identity_mask(tmp_path / "resumed", name)
    np.testing.assert_array_equal(a, b)
    assert meta["steps"] == 2 * 3  # 8 photos in batches of 3: 3 steps per epoch
  # A finished run is not trained again.
  assert gap_pipeline.train(config, protocol, model, tmp_path / "whole", show_progress=False)["generated"] == 0


def test_pipeline_method_gap_writes_masks_the_evaluation_scores(tmp_path, toy_runner):
  config, protocol = toy_config(), toy_protocol()
  rows = runner.run_all(config, tmp_path, protocol=protocol)
  workdir = tmp_path / "gap-dlib_resnet"
  found = [masks.load_identity_mask(workdir, name) for name in protocol.names]
  mask = found[0][0]
  assert all(np.array_equal(m, mask) for m, _ in found)  # one universal mask
  assert 0 < np.abs(mask).max() <= 8.0 + 1e-5
  meta = found[0][1]
  assert meta["method"] == "gap" and meta["settings"]["epochs"] == 2 and meta["settings"]["group_members"] == 4
  assert [(r["method"], r["target"], r["condition"]) for r in rows] == [("gap", "dlib_resnet", "none")]
  assert rows[0]["group_size"] == "all" and rows[0]["steps"] is None and 0.0 <= rows[0]["top1"] <= 1.0
  assert (workdir / "generation.0.json").is_file() and rows[0]["seconds"] > 0
  # The same config resumes (nothing to do); other GAP settings are refused before any work.
  before = {p: p.read_bytes() for p in workdir.rglob("*.npz")}
  runner.generate_all(config, tmp_path, protocol=protocol)
  assert {p: p.read_bytes() for p in workdir.rglob("*.npz")} == before
  with pytest.raises(settings.SettingsMismatchError, match="epochs: 2 in the masks, 3 now"):
    runner.generate_all(toy_config(epochs=3), tmp_path, protocol=protocol)


@pytest.mark.parametrize("field,value,fragment", [
    ("gap.epochs", 0, "config.gap.epochs"), ("gap.scaling", "l2", "config.gap.scaling"),
    ("gap.learning_rate", -1.0, "config.gap.learning_rate"), ("momentum", 1.0, "config.momentum"),
    ("surrogate", "dlib_resnet,sface", "config.surrogate"),
])
def test_bad_gap_config_is_one_line(tmp_path, field, value, fragment):
  config = toy_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=fragment) as refusal:
    gap_pipeline.check_config(config)
  assert "\n" not in str(refusal.value)


def test_unknown_gap_field_and_variants():
  config = toy_config()
  config.gap.epoch = 3  # a typo
  with pytest.raises(ValueError, match=r"config.gap has unknown field\(s\) \['epoch'\]"):
    gap_pipeline.check_config(config)
  full = gap_configs.get_config("dlib_full_all")
  gap_pipeline.check_config(full)
  assert full.methods == "gap" and full.dataset.num_identities == 0 and "mobileface" in full.targets
  assert validate.method_names(full) == ["gap"]
  with pytest.raises(ValueError, match="_mdfa and _eot variants and ensembles do not apply"):
    gap_configs.get_config("dlib_mdfa")
  mdfa = gap_configs.get_config("dlib")
  mdfa.momentum, mdfa.dropout = 1.0, 0.1  # set by hand, past the variant check
  with pytest.raises(ValueError, match="do\\(es\\) not apply to gap"):
    gap_pipeline.check_config(mdfa)
