"""The served ONNX file behind KServe's ModelServer, written as KServe's custom-model docs show.

Run with the KServe peer venv: `python bench/peer_apps/kserve_model.py --model_dir models/mnist/1
--model_name mnist --http_port 8080 --workers 2`. KServe starts its workers with multiprocessing's
"spawn" and pickles the model into each one: an onnxruntime session cannot travel that way, so it
is dropped when pickled and built again in each worker, after the fork.
"""
import argparse
import os

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.utils import generate_uuid


class OnnxModel(Model):
    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self.session = None
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one per worker, as this server's ORT_THREADS=1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(self.model_dir, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ready = True
        return self.ready

    def __getstate__(self):
        state = dict(self.__dict__)
        state["session"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.load()  # in the spawned worker

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        batch = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        names = [output.name for output in self.session.get_outputs()]
        results = self.session.run(names, {self.input_name: batch})
        outputs = [InferOutput(name=name, shape=list(result.shape), datatype="FP32", data=result)
                   for name, result in zip(names, results)]
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or generate_uuid())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    ModelServer().start([OnnxModel(args.model_name, args.model_dir)])
