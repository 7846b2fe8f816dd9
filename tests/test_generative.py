"""FID / IS / KID against closed forms, with a tiny feature network; the Inception path for its
error without weights, shapes and values against a direct Keras call (random weights built by the
test itself)."""

import json
import os

import keras
import numpy as np
import pytest
from scipy import special

from keras_ebm.backbones.classifier import build_classifier
from keras_ebm.backbones.tiny_cnn import TinyCNN
from keras_ebm.evaluation import generative as gen


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.RandomState(0).randn(400, 16) @ np.random.RandomState(1).randn(16, 16)
    assert gen.frechet_distance_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    # Fewer samples than dimensions: singular covariances, handled by the eps offset.
    few = np.random.RandomState(2).randn(10, 32)
    assert gen.frechet_distance_from_features(few, few) == pytest.approx(0.0, abs=1e-3)


def _spd2(rng):
    a = rng.randn(2, 2)
    return a @ a.T + 0.1 * np.eye(2)


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.RandomState(3)
    for _ in range(5):
        s1, s2 = _spd2(rng), _spd2(rng)
        m1, m2 = rng.randn(2), rng.randn(2)
        # For 2x2 matrices with positive eigenvalues, tr(sqrt(M)) = sqrt(tr M + 2 sqrt(det M)).
        tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
        expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
        assert gen.frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_fid_between_gaussian_feature_sets():
    rng = np.random.RandomState(4)
    d, n = 4, 200000
    m1, m2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    v1, v2 = np.array([1.0, 4.0, 0.25, 1.0]), np.array([2.25, 1.0, 0.25, 0.5])
    f1 = m1 + rng.randn(n, d) * np.sqrt(v1)
    f2 = m2 + rng.randn(n, d) * np.sqrt(v2)
    # Diagonal covariances: ||dm||^2 + sum (sqrt(v1) - sqrt(v2))^2.
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert gen.frechet_distance_from_features(f1, f2) == pytest.approx(expected, rel=0.01)


def test_inception_score_closed_forms():
    n, k = 1000, 5
    assert gen.inception_score(np.full((n, 10), 0.1)) == pytest.approx((1.0, 0.0))
    onehot = np.eye(k)[np.arange(n) % k]
    mean, std = gen.inception_score(onehot, splits=10)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-12)
    # Unequal use of the classes: exp(entropy of the class frequencies) < k.
    skewed = np.eye(k)[np.r_[np.zeros(600, int), np.arange(400) % 4 + 1]]
    freq = np.r_[0.6, [0.1] * 4]
    assert gen.inception_score(skewed, splits=1)[0] == pytest.approx(np.exp(-np.sum(freq * np.log(freq))))
    with pytest.raises(ValueError, match="softmax"):
        gen.inception_score(np.random.RandomState(0).randn(20, 3))


def test_kid_is_unbiased_with_a_linear_kernel():
    """With k(x, y) = <x, y> the population MMD^2 is ||mu_x - mu_y||^2; the unbiased estimate
    averages to it, where the biased (V-statistic) estimate is off by tr(S_x)/m + tr(S_y)/n."""
    rng = np.random.RandomState(5)
    d, m, trials = 5, 10, 1000
    shift = np.array([0.3, 0.0, -0.2, 0.0, 0.1])
    kernel = dict(degree=1, gamma=1.0, coef0=0.0)
    for mu_y, target in ((np.zeros(d), 0.0), (shift, float(shift @ shift))):
        values, biased = [], []
        for _ in range(trials):
            x, y = rng.randn(m, d), mu_y + rng.randn(m, d)
            values.append(gen.mmd2_unbiased(x, y, **kernel))
            biased.append(float(np.sum((x.mean(0) - y.mean(0)) ** 2)))
        se = np.std(values) / np.sqrt(trials)
        assert abs(np.mean(values) - target) < 4 * se, (np.mean(values), target, se)
        assert np.mean(biased) - target > 20 * se  # the bias (2 d / m = 1.0) the estimator removes
    # Exact identity for the linear kernel.
    x, y = rng.randn(7, d), rng.randn(9, d)
    sx, sy = x.sum(0), y.sum(0)
    exact = (sx @ sx - np.sum(x * x)) / (7 * 6) + (sy @ sy - np.sum(y * y)) / (9 * 8) - 2 * (x.mean(0) @ y.mean(0))
    assert gen.mmd2_unbiased(x, y, **kernel) == pytest.approx(exact)
    # KID with the default cubic kernel of two samples of one distribution: about 0.
    a, b = rng.randn(600, 8), rng.randn(600, 8)
    mean, std = gen.kernel_inception_distance(a, b, num_subsets=20, subset_size=300)
    assert abs(mean) < 3 * std + 1e-3


@pytest.fixture(scope="module")
def tiny_features():
    keras.utils.set_random_seed(0)
    network = build_classifier(TinyCNN((8, 16), input_shape=(8, 8, 1)), num_classes=10)
    return gen.ClassifierFeatures(network, name="tiny_test", pixel_range=(-1.0, 1.0))


def test_classifier_feature_metrics_and_reference_cache(tiny_features, tmp_path):
    rng = np.random.RandomState(6)
    ref_images = rng.randint(0, 256, (300, 8, 8, 1)).astype("uint8")
    ref = gen.reference_statistics(
        tiny_features,
        dataset="noise8",
        split="train",
        images=ref_images,
        cache_dir=str(tmp_path),
        progress=False,
        kid_features=200,
    )
    assert os.path.basename(ref["path"]) == "noise8_train__classifier_tiny_test__nall.npz"
    assert ref["num_examples"] == 300 and ref["features"].shape == (200, 16)
    # The second call reads the cache: no images and an unknown data set name would fail otherwise.
    again = gen.reference_statistics(tiny_features, dataset="noise8", split="train", cache_dir=str(tmp_path))
    np.testing.assert_allclose(again["mu"], ref["mu"])

    same = gen.evaluate_generative(
        ref_images,
        tiny_features,
        ref,
        splits=5,
        kid_subsets=5,
        kid_subset_size=100,
        progress=False,
        output_dir=str(tmp_path),
        name="same",
    )
    assert same["classifier_fd"] == pytest.approx(0.0, abs=1e-6)
    assert not any(k in same for k in ("fid", "inception_score", "kid"))
    assert "not FID" in same["note"] and same["num_samples"] == 300
    assert json.loads((tmp_path / "generative_same.json").read_text())["feature_network"] == "classifier_tiny_test"
    dark = (ref_images // 4).astype("uint8")
    other = gen.evaluate_generative(
        dark, tiny_features, ref, splits=5, kid_subsets=5, kid_subset_size=100, progress=False, max_examples=200
    )
    assert other["classifier_fd"] > 1e-3 and other["num_samples"] == 200
    assert other["classifier_kd"] > 0
    probs = special.softmax(tiny_features(dark[:200])["logits"], -1)
    assert other["classifier_score"] == pytest.approx(gen.inception_score(probs, 5)[0])


def test_inception_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv(gen.WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="never uses random Inception weights") as info:
        gen.InceptionV3Features()
    assert os.path.join(str(tmp_path), "models", gen.INCEPTION_WEIGHTS_FILE) in str(info.value)
    assert "weights=" in str(info.value) and "classifier_fd" in str(info.value)
    with pytest.raises(FileNotFoundError, match="/no/such/file.h5"):
        gen.InceptionV3Features(weights="/no/such/file.h5")


def test_inception_features_shapes_and_values_with_random_weights_built_by_the_test():
    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(weights=None, classifier_activation=None)  # shapes only
    net = gen.InceptionV3Features(model=model)
    out = net(np.random.RandomState(7).randint(0, 256, (2, 32, 32, 3)).astype("uint8"))
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1000)
    grey = net(np.zeros((1, 8, 8, 1), "uint8"))
    assert grey["pool"].shape == (1, 2048)
    assert net.metric_names["fd"] == "fid"
    # Values: the pool features are the 'avg_pool' layer's and the logits the model's, on the images
    # resized bilinearly to 299 and mapped by Keras' own Inception preprocessing (to [-1, 1]).
    import tensorflow as tf

    images = np.random.RandomState(8).randint(0, 256, (2, 32, 32, 3)).astype("uint8")
    x = keras.applications.inception_v3.preprocess_input(
        tf.image.resize(tf.cast(images, tf.float32), (299, 299), method="bilinear").numpy()
    )
    pool = keras.Model(model.inputs, model.get_layer("avg_pool").output)(x, training=False).numpy()
    out = net(images)
    # Random weights: features of about 1e-3 that differ between images by about 1% of the largest,
    # 100 times the tolerance below.
    top = np.abs(pool).max()
    assert np.abs(pool[0] - pool[1]).max() > 1e-2 * top
    np.testing.assert_allclose(out["pool"], pool, rtol=1e-4, atol=1e-4 * top)
    logits = model(x, training=False).numpy()
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    # A grey image is its three-channel copy.
    grey_images = images[..., :1]
    np.testing.assert_allclose(net(grey_images)["pool"], net(np.repeat(grey_images, 3, -1))["pool"], rtol=1e-6)


def test_feature_statistics_use_the_unbiased_covariance():
    # FID's statistics (pytorch-fid, TTUR: np.cov) divide by N - 1; with 5 samples a biased
    # covariance is 20% smaller.
    features = np.random.RandomState(9).randn(5, 3)
    mu, sigma = gen.feature_statistics(features)
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-12)
    centered = features - features.mean(axis=0)
    np.testing.assert_allclose(sigma, centered.T @ centered / 4, rtol=1e-12)


def test_kid_with_one_subset_of_the_full_sets_is_the_unbiased_mmd():
    # Subsets are drawn without replacement: a subset of the whole set is a permutation of it, and
    # the unbiased MMD^2 does not depend on the order (drawn with replacement it would repeat rows).
    rng = np.random.RandomState(10)
    a, b = rng.randn(30, 4), rng.randn(25, 4) + 0.3
    mean, std = gen.kernel_inception_distance(a[:25], b, num_subsets=1, subset_size=25)
    np.testing.assert_allclose(mean, gen.mmd2_unbiased(a[:25], b), rtol=1e-10, atol=1e-12)
    assert std == 0.0


def brightness_classifier(centers=(-0.6, 0.0, 0.6)):
    """Float logits_fn on (-1, 1) images: class c scores -(mean(x) - center_c)^2 * 20."""
    import tensorflow as tf

    c = tf.constant(centers, tf.float32)

    def fn(x):
        m = tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), -1, keepdims=True)
        return -20.0 * tf.square(m - c)

    return fn


def test_sample_quality_confusion_accuracy_and_rankings(tmp_path):
    from keras_ebm.evaluation import sample_quality as sq

    rng = np.random.RandomState(8)
    levels = {0: 51, 1: 128, 2: 204}  # grey levels whose means are the three centres
    intended, images = [], []
    for cls, level_choices in ((0, [0] * 8), (1, [1] * 5 + [2] * 5), (2, [2] * 6)):
        for lv in level_choices:
            intended.append(cls)
            jitter = rng.randint(-12, 13)
            images.append(np.full((8, 8, 1), levels[lv] + jitter, np.uint8))
    images, intended = np.stack(images), np.array(intended)
    fn = brightness_classifier()
    res = sq.classify_samples(
        images,
        intended,
        fn,
        pixel_range=(-1.0, 1.0),
        class_names=("dark", "mid", "light"),
        top_k=3,
        output_dir=str(tmp_path),
        name="toy",
        progress=False,
    )
    np.testing.assert_allclose(res["confusion_matrix_normalized"], [[1, 0, 0], [0, 0.5, 0.5], [0, 0, 1]])
    assert res["confusion_matrix"] == [[8, 0, 0], [0, 5, 5], [0, 0, 6]]
    assert res["accuracy"] == pytest.approx((8 + 5 + 6) / 24)
    assert res["per_class_accuracy"] == pytest.approx([1.0, 0.5, 1.0])

    x = images.astype(np.float64) / 127.5 - 1
    logits = np.asarray(fn(x.astype("float32")))
    log_px, p = special.logsumexp(logits, -1), special.softmax(logits, -1)
    for c in range(3):
        idx = np.flatnonzero(intended == c)
        assert res["ranked"]["px_highest"][str(c)][0] == idx[np.argmax(log_px[idx])]
        assert res["ranked"]["px_lowest"][str(c)][0] == idx[np.argmin(log_px[idx])]
        assert res["ranked"]["pyx_highest"][str(c)][0] == idx[np.argmax(p[idx, c])]
        assert res["ranked"]["pyx_lowest"][str(c)][0] == idx[np.argmin(p[idx, c])]
    for key in ("confusion", "px_highest", "px_lowest", "pyx_highest", "pyx_lowest"):
        assert os.path.getsize(res["files"][key]) > 500, key
    on_disk = json.loads((tmp_path / "sample_quality_toy.json").read_text())
    assert on_disk["accuracy"] == pytest.approx(res["accuracy"])

    # Unconditional samples: grouped by the prediction, no accuracy; a ranking model of its own.
    unc = sq.classify_samples(
        images,
        None,
        fn,
        pixel_range=(-1.0, 1.0),
        ranking_model=brightness_classifier((0.6, 0.0, -0.6)),
        ranking_pixel_range=(-1.0, 1.0),
        progress=False,
    )
    assert unc["accuracy"] is None and unc["samples_per_class"] == [8, 5, 11]
    assert unc["ranking"] == "ranking_model"
