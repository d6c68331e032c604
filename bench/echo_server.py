"""Load-generator calibration: the smallest FastAPI server that answers /predict.

Run as ``python bench/echo_server.py PORT``. It validates the same request body
and returns a prediction-shaped answer without a model, so what bench/serve.py
measures against it is the ceiling of the load generator plus HTTP on this
machine, not of any server.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
ANSWER = {"label": "neutral", "scores": [0.2, 0.6, 0.2]}


class Body(BaseModel):
    text: str


@app.post("/predict")
async def predict(body: Body) -> dict[str, object]:
    return ANSWER


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
