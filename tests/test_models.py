import pytest
import torch

from cgan.errors import ConfigError
from cgan.models import ConvDiscriminator, ConvGenerator, Discriminator, Dropout, Generator, recompute_batch_norm


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_seed_networks_have_the_seed_layers_and_parameter_counts():
    g, d = Generator(), Discriminator()
    # (128+10)*512+512 + 512*784+784 and (784+10)*512+512 + 512+1
    assert n_params(g) == 473_360
    assert n_params(d) == 407_553
    assert [type(m).__name__ for m in g.model] == ["Linear", "LeakyReLU", "Linear", "Tanh"]
    assert [type(m).__name__ for m in d.model] == ["Linear", "LeakyReLU", "Dropout", "Linear"]
    assert d.model[2].p == 0.3 and g.model[1].negative_slope == 0.2


def test_dropout_keeps_each_unit_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(999, 1001, requires_grad=True)  # an odd count: one 64-bit draw covers two units
    out = drop(x)
    kept = out != 0
    assert out.shape == x.shape
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    # the two units cut from one draw are independent
    pairs = kept.flatten()[: 999 * 1000].view(-1, 2).float()
    assert abs((pairs[:, 0] * pairs[:, 1]).mean().item() - 0.49) < 0.005
    out.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.7)
    assert not torch.equal(drop(x), out)  # a fresh mask each call
    drop.eval()
    x = torch.randn(4, 4)
    assert torch.equal(drop(x), x)


@pytest.mark.parametrize("g_cls, d_cls", [(Generator, Discriminator), (ConvGenerator, ConvDiscriminator)])
def test_shapes_range_and_label_conditioning(g_cls, d_cls):
    torch.manual_seed(0)
    g, d = g_cls(), d_cls()
    z = torch.randn(8, g.noise_dim)
    y = torch.arange(8) % 10
    images = g(z, y)
    assert images.shape == (8, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images, y).shape == (8,)
    with torch.no_grad():  # large weights: only the final tanh keeps the images in [-1, 1]
        for p in g.parameters():
            p.mul_(50)
        big = g(z, y)
    assert big.min() >= -1 and big.max() <= 1 and big.abs().max() > 0.99
    g = g_cls()
    g.eval()
    assert not torch.allclose(g(z, y), g(z, (y + 1) % 10))
    d.eval()
    assert not torch.allclose(d(images, y), d(images, (y + 1) % 10))


def test_conv_discriminator_is_spectrally_normalized_unless_told_otherwise():
    def normalized(d):
        return [name for name, _ in d.named_modules() if name.endswith("parametrizations.weight")]

    assert len(normalized(ConvDiscriminator())) == 5  # three convs, the linear head and the projection embedding
    torch.manual_seed(0)
    plain = ConvDiscriminator(spectral=False)
    assert normalized(plain) == []
    features = 4 * 32 * 7 * 7
    assert abs(plain.embed.weight.std().item() * features**0.5 - 1.0) < 0.05  # not nn.Embedding's N(0, 1)
    logits = plain(torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10)
    assert logits.abs().max() < 0.5  # 7.3 with nn.Embedding's N(0, 1) start, for this seed


@pytest.mark.parametrize("spectral", [True, False])
def test_conv_discriminators_class_head_names_digits_from_the_image_alone(spectral):
    torch.manual_seed(0)
    d = ConvDiscriminator(channels=8, spectral=spectral, classifier=True).eval()
    x, y = torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6)
    logits, classes = d(x, y, classes=True)
    assert logits.shape == (6,) and classes.shape == (6, 10)
    assert torch.equal(logits, d(x, y))  # the same realism logits as without the head
    other_logits, other_classes = d(x, (y + 1) % 10, classes=True)
    assert torch.equal(classes, other_classes)  # not told the label
    assert not torch.allclose(logits, other_logits)
    assert not torch.allclose(classes, d(-x, y, classes=True)[1])  # but shown the image
    head = [name for name, _ in d.named_modules() if name.startswith("classifier.parametrizations")]
    assert bool(head) == spectral  # normalized like the other layers


@pytest.mark.parametrize("spectral", [True, False])
def test_conv_discriminators_twin_head_is_a_second_class_head_returned_last(spectral):
    torch.manual_seed(0)
    d = ConvDiscriminator(channels=8, spectral=spectral, classifier=True, twin=True).eval()
    x, y = torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6)
    logits, classes, twin = d(x, y, classes=True)
    assert logits.shape == (6,) and classes.shape == twin.shape == (6, 10)
    assert torch.equal(logits, d(x, y)) and torch.equal(classes, d.classifier(d.features(x)))
    assert not torch.allclose(twin, classes)  # its own weights
    assert torch.equal(twin, d(x, (y + 1) % 10, classes=True)[2])  # not told the label
    assert not torch.allclose(twin, d(-x, y, classes=True)[2])  # but shown the image
    head = [name for name, _ in d.named_modules() if name.startswith("twin.parametrizations")]
    assert bool(head) == spectral
    assert ConvDiscriminator(channels=8, classifier=True).twin is None


def test_a_twin_head_without_the_class_head_is_refused():
    with pytest.raises(ConfigError, match="twin: true needs the class head too: set classifier: true"):
        ConvDiscriminator(channels=8, twin=True)


def test_conv_discriminator_without_a_class_head_says_how_to_get_one():
    d = ConvDiscriminator(channels=8)
    assert d.classifier is None
    with pytest.raises(ConfigError, match="classes=True needs the class head: build it with classifier: true"):
        d(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), classes=True)


def test_conv_discriminator_sees_where_strokes_are():
    torch.manual_seed(0)
    d = ConvDiscriminator(channels=8).eval()
    x = torch.zeros(1, 1, 28, 28)
    x[..., 2:8, 2:8] = 1  # the same blob in two corners: pooled features could not tell them apart
    moved = torch.roll(x, shifts=(18, 18), dims=(2, 3))
    y = torch.tensor([3])
    assert not torch.allclose(d(x, y), d(moved, y))


def test_recompute_batch_norm_averages_over_fresh_samples_and_spares_the_global_rng():
    torch.manual_seed(0)
    g = ConvGenerator(channels=8)
    bn = g.bn1.bn
    bn.running_mean.fill_(5.0)
    seen = []
    handle = bn.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].mean(dim=(0, 2, 3))))
    rng = torch.get_rng_state()
    g.eval()
    recompute_batch_norm(g, batches=3, batch_size=20, seed=7)
    handle.remove()
    assert len(seen) == 3
    assert torch.allclose(bn.running_mean, torch.stack(seen).mean(0), atol=1e-6)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not g.training and bn.momentum == 0.1
    first = bn.running_var.clone()
    recompute_batch_norm(g, batches=3, batch_size=20, seed=7)
    assert torch.equal(bn.running_var, first)  # a function of the weights and the seed only


def test_recompute_batch_norm_leaves_a_generator_without_batch_norm_alone():
    g = Generator()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    recompute_batch_norm(g)
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    "build, text",
    [
        (lambda: Generator(noise_dim=0), "Generator: noise_dim and hidden_dim must be positive, got 0 and 512."),
        (lambda: Discriminator(dropout=1.5), r"dropout in \[0, 1\), got 512 and 1.5"),
    ],
)
def test_bad_sizes_are_rejected(build, text):
    with pytest.raises(ConfigError, match=text):
        build()
