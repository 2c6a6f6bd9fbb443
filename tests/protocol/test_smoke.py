import numpy as np
import tritonclient.grpc as tc


def test_mlp_infer(server):
    client = tc.InferenceServerClient(server.url)
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    inp = tc.InferInput("input", [3, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp])
    assert result.get_response().model_version == "1.10.0"
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
