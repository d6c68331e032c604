"""The naive baseline: a tutorial-shaped FastAPI server, one request = one forward pass.

Run as ``python bench/naive_server.py MODEL_DIR PORT THREADS``; same model
directory, same tokenizer and truncation as flipserve, no batching.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model_dir, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
max_length = int(json.loads((Path(model_dir) / "flipserve.json").read_text())["max_length"])
tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
app = FastAPI()


class Body(BaseModel):
    text: str


@app.post("/predict")
async def predict(body: Body) -> dict[str, object]:
    with torch.inference_mode():
        enc = tokenizer([body.text], truncation=True, max_length=max_length, return_tensors="pt")
        probs = torch.softmax(model(**enc).logits, dim=-1)[0]
    label = model.config.id2label[int(probs.argmax())]
    return {"label": label, "scores": probs.tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
