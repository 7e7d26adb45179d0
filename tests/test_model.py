"""The model of utils.py section 2 on tiny random-init extractors (demo/build_ser_models.py)."""

import pytest
import torch

import utils
from common import cli, fileio
from common.formats import LABELS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from demo.build_ser_models import build

    return build(tmp_path_factory.mktemp("ser_models"), seed=0)


@pytest.fixture(scope="module")
def parts(tiny_models):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"], "fusion", dropout=0.2, heads=8).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["text_model"])
    return model, tok


def items(n, lengths, texts):
    g = torch.Generator().manual_seed(1)
    return [
        {
            "index": i,
            "audio": utils.zero_mean_unit_var(torch.randn(lengths[i], generator=g)),
            "text": texts[i],
            "label": i % len(LABELS),
        }
        for i in range(n)
    ]


def test_shapes_through_every_module(parts):
    model, tok = parts
    batch = utils.Collator(tok)(items(3, [4000, 6400, 12000], ["hi", "I am so happy today", "no"]))
    assert batch["input_values"].shape == (3, 12000) and batch["lengths"].tolist() == [4000, 6400, 12000]
    with torch.no_grad():
        z_t, z_a = model.embed(batch)
        assert z_t.shape == (3, 64) and z_a.shape == (3, 64)  # hidden sizes of the tiny configs
        t, a = z_t[:, None], z_a[:, None]
        a_ta, a_at = model.cross(t, a)
        assert a_ta.shape == a_at.shape == (3, 1, 64)
        h_ta, h_at = model.gate_t(t, a_ta), model.gate_a(a, a_at)
        logits = model.head(torch.cat([h_ta, h_at], dim=1))  # [h(t,a); h(a,t)] -> [3, 4]
        assert logits.shape == (3, len(LABELS))
        assert torch.allclose(model(batch), logits)
    # frame lengths follow wav2vec2's conv arithmetic, here the demo model's one layer: 25 ms window, 40 ms hop
    assert model.audio.frame_lengths(torch.tensor([400, 4000, 16000])).tolist() == [1, 6, 25]


def test_head_equations_in_order(parts):
    """The head computes, in this order, the equations of the docstrings (the authors' model)."""
    model, _ = parts
    D = 64
    g = torch.Generator().manual_seed(3)
    z_t, z_a = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
    t, a = z_t[:, None], z_a[:, None]
    c = model.cross
    with torch.no_grad():
        # a(t,a) = LN_t(MHA_ta(q=z_t, k=z_a, v=z_a) + z_t): with one key, MHA = out_proj(v_proj(z_a))
        W_v = c.attn_ta.in_proj_weight[2 * D :]
        b_v = c.attn_ta.in_proj_bias[2 * D :]
        mha = c.attn_ta.out_proj(z_a @ W_v.T + b_v)
        a_ta = torch.nn.functional.layer_norm(mha + z_t, (D,), c.norm_ta.weight, c.norm_ta.bias, c.norm_ta.eps)
        assert torch.allclose(c(t, a)[0][:, 0], a_ta, atol=1e-5)
        # h(t,a) = ReLU(z_t + sigmoid(W_g [z_t; a(t,a)] + b_g) * (W_v a(t,a) + b_v))
        gate = model.gate_t
        expected = torch.relu(z_t + torch.sigmoid(gate.gate(torch.cat([z_t, a_ta], -1))) * gate.value(a_ta))
        h_ta = gate(t, a_ta[:, None])[:, 0]
        assert torch.allclose(h_ta, expected, atol=1e-6)
        assert (h_ta >= 0).all() and (h_ta == 0).any()  # ReLU output: non-negative, some exactly zero
        # fusion: [h(t,a); h(a,t)] + PE -> 2-layer post-norm encoder -> mean over the 2 tokens -> Linear
        h_at = model.gate_a(a, c(t, a)[1])
        tokens = torch.cat([h_ta[:, None], h_at], 1)
        pe = torch.zeros(2, D)
        freq = torch.exp(-torch.arange(0, D, 2).float() / D * torch.log(torch.tensor(10000.0)))
        pe[1, 0::2], pe[1, 1::2] = torch.sin(freq), torch.cos(freq)
        pe[0, 1::2] = 1.0
        x = tokens + pe
        for layer in model.head.encoder.layers:
            assert not layer.norm_first and layer.linear1.out_features == 2048
            x = layer(x)
        assert len(model.head.encoder.layers) == 2
        logits = model.head.classifier(x.mean(1))
        assert torch.allclose(model.classify(z_t, z_a), logits, atol=1e-5)
    # gate forced shut (W_g -> -inf): h = ReLU(z); forced open: h = ReLU(z + W_v a + b_v)
    with torch.no_grad():
        a_at = c(t, a)[1]
        model.gate_a.gate.bias.fill_(-1e4)
        assert torch.allclose(model.gate_a(a, a_at), torch.relu(a), atol=1e-6)
        model.gate_a.gate.bias.fill_(1e4)
        assert torch.allclose(model.gate_a(a, a_at), torch.relu(a + model.gate_a.value(a_at)), atol=1e-5)
        model.gate_a.gate.reset_parameters()


def test_head_has_the_authors_parameter_count_at_768(tmp_path):
    """At D = 768 (roberta-base, wav2vec2-base) the head has exactly the authors' 19,300,868 parameters.
    Configs only: no weights are loaded or needed."""
    from transformers import RobertaConfig, Wav2Vec2Config

    RobertaConfig().save_pretrained(tmp_path / "text")
    Wav2Vec2Config().save_pretrained(tmp_path / "audio")
    head = utils.SERModel(str(tmp_path / "text"), str(tmp_path / "audio"), "fusion", load_extractors=False)
    assert head.dim == 768 and isinstance(head.proj_a, torch.nn.Identity)
    assert sum(p.numel() for p in head.head_parameters()) == 19_300_868
    counts = {
        name: sum(p.numel() for p in getattr(head, name).parameters()) for name in ("cross", "gate_t", "gate_a", "head")
    }
    assert counts == {
        "cross": 2 * (4 * 768 * 768 + 4 * 768) + 2 * 2 * 768,  # two MHA + two LayerNorm
        "gate_t": 2 * 768 * 768 + 768 + 768 * 768 + 768,
        "gate_a": 1_771_008,  # W_g, W_v
        "head": 2 * (4 * 768 * 768 + 4 * 768 + 2 * 768 * 2048 + 2048 + 768 + 4 * 768) + 768 * 4 + 4,
    }
    # the fusion ablations at the same size
    sizes = {
        f: sum(
            p.numel()
            for p in utils.SERModel(
                str(tmp_path / "text"), str(tmp_path / "audio"), "fusion", fusion=f, load_extractors=False
            ).head_parameters()
        )
        for f in utils.FUSIONS
    }
    assert sizes["xattn"] == 19_300_868 - 2 * 1_771_008
    assert sizes["concat"] == 2 * 768 * 768 + 768 + 768 * 4 + 4
    assert sizes["late"] == 2 * counts["head"]


def test_fusion_variants_train_step_and_differ(parts, tiny_models):
    _, tok = parts
    batch = utils.Collator(tok)(items(4, [4000, 5000, 6000, 7000], ["a", "b c", "d e f", "g"]))
    z_t, z_a = torch.randn(4, 64), torch.randn(4, 64)
    for fusion in utils.FUSIONS:
        torch.manual_seed(0)
        m = utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"], "fusion", fusion=fusion)
        assert (m.cross is not None) == (fusion in ("gated-xattn", "xattn"))
        assert (m.gate_t is not None) == (fusion == "gated-xattn")
        loss = torch.nn.functional.cross_entropy(m(batch), batch["labels"])
        loss.backward()
        assert all(p.grad is not None for p in m.head_parameters()), fusion
        m.eval()
        with torch.no_grad():
            if fusion == "late":  # the mean of the two single-modality heads' logits
                expected = (m.head_t(z_t[:, None]) + m.head_a(z_a[:, None])) / 2
                assert torch.allclose(m.classify(z_t, z_a), expected, atol=1e-6)
            if fusion == "xattn":  # no gates: the fusion layer sees [a(t,a); a(a,t)]
                a_ta, a_at = m.cross(z_t[:, None], z_a[:, None])
                assert torch.allclose(m.classify(z_t, z_a), m.head(torch.cat([a_ta, a_at], 1)), atol=1e-6)
    with pytest.raises(cli.PipelineError, match="fusion"):
        utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"], "fusion", fusion="sum")


def test_authors_audio_padding_depends_on_the_batch(parts, tiny_models):
    """--audio-padding authors: no attention mask, mean over every frame of the padded batch (their
    wav2vec2-base); a sample's embedding then changes with its batch, ours does not."""
    _, tok = parts
    m = utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"], "audio", audio_padding="authors").eval()
    its = items(2, [3000, 16000], ["a", "b"])
    collate = utils.Collator(tok)
    with torch.no_grad():
        together = m.embed(collate(its))[1]
        alone = m.embed(collate(its[:1]))[1]
        naive = m.audio.model(collate(its)["input_values"]).last_hidden_state.mean(1)
    assert torch.allclose(together, naive, atol=1e-6)
    assert not torch.allclose(together[0], alone[0], atol=1e-3)


def test_padding_does_not_change_embeddings(parts):
    """A sample padded inside a batch gives the embedding it gets alone (to 1e-5)."""
    model, tok = parts
    its = items(3, [3000, 9000, 16000], ["yes", "what do you want from me", "I never said that, never"])
    collate = utils.Collator(tok)
    with torch.no_grad():
        together_t, together_a = model.embed(collate(its))
        for i, it in enumerate(its):
            alone_t, alone_a = model.embed(collate([it]))
            assert torch.allclose(together_a[i], alone_a[0], atol=1e-5), f"audio sample {i}"
            assert torch.allclose(together_t[i], alone_t[0], atol=1e-5), f"text sample {i}"
    # the masked GroupNorm of the batched CNN is HF's own CNN when nothing is padded
    batch = collate(its)
    with torch.no_grad():
        x = batch["input_values"][:1, :3000]
        ours = model.audio.cnn_features(x, torch.tensor([3000]))
        assert torch.allclose(ours, model.audio.model.feature_extractor(x), atol=1e-5)
    # the padding-exact CNN matters: the group-norm CNN run batched on zero-padded audio differs
    with torch.no_grad():
        naive = model.audio.model(batch["input_values"]).last_hidden_state[0, :9].mean(0)
    assert not torch.allclose(naive, together_a[0], atol=1e-3)


def test_single_modality_models_and_projection(tiny_models):
    for modality, dim in (("text", 64), ("audio", 64)):
        m = utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"], modality).eval()
        assert (m.text is None) == (modality == "audio") and (m.audio is None) == (modality == "text")
        assert m.cross is None
        z = torch.randn(5, dim)
        assert m.classify(z if modality == "text" else None, z if modality == "audio" else None).shape == (5, 4)
    head_only = utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"], "fusion", load_extractors=False)
    assert head_only.extractors() == [] and len(head_only.head_parameters()) > 0
    with pytest.raises(cli.PipelineError):
        utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"], "video")
    with pytest.raises(cli.PipelineError, match="divisible"):
        utils.SERModel(tiny_models["text_model"], tiny_models["audio_model"], "fusion", heads=6)


def test_bucket_sampler_is_deterministic_and_groups_lengths():
    lengths = [int(x) for x in torch.randint(1000, 100000, (200,), generator=torch.Generator().manual_seed(0))]
    s = utils.LengthBucketSampler(lengths, batch_size=8, shuffle=True, seed=3, pool_batches=5)
    s.set_epoch(1)
    a = s.batches()
    s2 = utils.LengthBucketSampler(lengths, 8, True, 3, pool_batches=5)
    s2.set_epoch(1)
    assert s2.batches() == a
    s2.set_epoch(2)
    assert s2.batches() != a
    assert sorted(i for b in a for i in b) == list(range(200))

    # padding: bucketed batches waste far less than random batches of the same size
    def waste(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0)).tolist()
    assert waste(a) < 0.5 * waste([perm[i : i + 8] for i in range(0, 200, 8)])
    # distributed: 25 batches padded to 26, 13 per rank, together covering every index
    r0 = utils.LengthBucketSampler(lengths, 8, True, 3, rank=0, world_size=2).batches()
    r1 = utils.LengthBucketSampler(lengths, 8, True, 3, rank=1, world_size=2).batches()
    assert len(r0) == len(r1) == 13
    assert sorted({i for b in r0 + r1 for i in b}) == list(range(200))


def test_dataset_crops_normalises_and_rejects_bad_caches(tmp_path):
    seg = {
        "id": "Ses01F_impro01-0000",
        "start": 0.0,
        "end": 3.0,
        "speaker": "SPEAKER_00",
        "text": "hi",
        "label": 2,
        "audio": torch.randn(48000) * 3 + 1,
    }
    unl = dict(seg, id="Ses01F_impro01-0001", label=-1, audio=torch.randn(100))
    fileio.atomic_torch_save(
        {"dialog": "Ses01F_impro01", "session": 1, "sample_rate": 16000, "segments": [seg, unl]},
        tmp_path / "Ses01F_impro01.pt",
    )
    ds = utils.SegmentDataset([tmp_path / "Ses01F_impro01.pt"], labelled_only=True, max_audio_seconds=2.0)
    assert len(ds) == 1 and ds.counts["unlabelled_skipped"] == 1 and ds.counts["cropped"] == 1
    a = ds[0]["audio"]
    assert a.numel() == 32000 and abs(float(a.mean())) < 1e-4 and abs(float(a.std(unbiased=False)) - 1) < 1e-3
    ds_all = utils.SegmentDataset([tmp_path / "Ses01F_impro01.pt"], labelled_only=False)
    assert len(ds_all) == 2 and ds_all.counts["padded_short"] == 1 and ds_all[1]["audio"].numel() == 400
    fileio.atomic_torch_save({"dialog": "x", "segments": [dict(seg, label=7)]}, tmp_path / "bad.pt")
    with pytest.raises(cli.PipelineError, match="bad.pt"):
        utils.SegmentDataset([tmp_path / "bad.pt"], labelled_only=True)
    (tmp_path / "corrupt.pt").write_bytes(b"not a zip")
    with pytest.raises(cli.PipelineError, match="corrupt.pt"):
        utils.SegmentDataset([tmp_path / "corrupt.pt"], labelled_only=True)


def test_other_groupnorm_shapes_fall_back_to_per_sample_cnn(tiny_models):
    audio = utils.AudioEmbedder(tiny_models["audio_model"]).eval()
    audio.model.feature_extractor.conv_layers[0].layer_norm.num_groups = 1  # one group over all channels
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2000, generator=g), torch.randn(5000, generator=g)
    batch = torch.zeros(2, 5000)
    batch[0, :2000], batch[1] = a, b
    with torch.no_grad():
        together = audio(batch, torch.tensor([2000, 5000]))
        alone = audio(a[None], torch.tensor([2000]))
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_cached_cnn_features_give_the_live_embedding(parts, tmp_path):
    """A frozen CNN's features, computed once per segment (cache_cnn_features) and batched by the
    Collator, give the same audio embedding as running the CNN on the padded audio."""
    model, tok = parts
    seg = [
        {
            "id": f"Ses01F_impro01-{i:04d}",
            "start": float(i),
            "end": i + 1.0,
            "speaker": "A",
            "text": "hi there",
            "label": i % 4,
            "audio": torch.randn(n, generator=torch.Generator().manual_seed(i)),
        }
        for i, n in enumerate((3000, 9000, 16000, 5000))
    ]
    fileio.atomic_torch_save(
        {"dialog": "Ses01F_impro01", "session": 1, "sample_rate": 16000, "segments": seg},
        tmp_path / "Ses01F_impro01.pt",
    )
    live = utils.SegmentDataset([tmp_path / "Ses01F_impro01.pt"], labelled_only=True)
    cached = utils.SegmentDataset([tmp_path / "Ses01F_impro01.pt"], labelled_only=True)
    assert utils.cache_cnn_features(model.audio, cached, batch_size=3, device="cpu") == 4
    assert utils.cache_cnn_features(model.audio, cached, batch_size=3, device="cpu") == 0  # kept
    collate = utils.Collator(tok)
    a, b = collate([live[i] for i in range(4)]), collate([cached[i] for i in range(4)])
    assert "input_values" not in b and b["cnn"].shape[:2] == (4, 64)
    with torch.no_grad():
        assert torch.allclose(model.embed(a)[1], model.embed(b)[1], atol=1e-5)
        assert torch.allclose(model(a), model(b), atol=1e-5)
