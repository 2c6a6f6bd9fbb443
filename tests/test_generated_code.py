import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protocol_code_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "up to date" in result.stdout


def test_wire_compatible_with_tritonclient():
    """Our messages and Triton's (as tritonclient ships them) encode to the same bytes."""
    from tritonclient.grpc import service_pb2 as triton

    from sidecar.protocol._generated import grpc_service_pb2 as ours

    req = ours.ModelInferRequest(model_name="m", model_version="1.0.0", id="7")
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    req.parameters["priority"].int64_param = 3
    req.outputs.add(name="y")
    req.raw_input_contents.append(b"")
    theirs = triton.ModelInferRequest.FromString(req.SerializeToString())
    assert theirs.inputs[0].contents.fp32_contents == [1.0, 2.0]
    assert theirs.parameters["priority"].int64_param == 3
    assert theirs.SerializeToString() == req.SerializeToString()
    stats = ours.ModelStatisticsResponse()
    s = stats.model_stats.add(name="m", version="1", inference_count=5, execution_count=2)
    s.inference_stats.queue.ns = 99
    s.batch_stats.add(batch_size=4).compute_infer.count = 1
    back = triton.ModelStatisticsResponse.FromString(stats.SerializeToString())
    assert back.model_stats[0].inference_stats.queue.ns == 99 and back.model_stats[0].batch_stats[0].batch_size == 4
