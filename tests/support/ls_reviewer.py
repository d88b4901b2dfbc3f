"""A reviewer at a real Label Studio server, through label-studio-sdk; run with the Label Studio venv's Python.

    python ls_reviewer.py URL EMAIL PASSWORD TASKS.json CONFIG.xml PLAN.json EXPORT.json

Logs in, makes an access token, creates a project with the labeling config, imports
the tasks (with their predictions), then for each image named in PLAN submits an
annotation: the predictions as they are, changed by the plan's operations on
regions (ids ``m<annotation_id>``: every part of that mask):

    {"<segflow_image_id>": [{"op": "relabel", "mask": 300001, "label": "square"},
                            {"op": "delete", "mask": 300002},
                            {"op": "move", "mask": 300003, "dx": 2.0, "dy": 0.0},      # percent of the image
                            {"op": "add", "label": "circle", "points": [[x, y], ...]}]}  # percent

An empty list accepts the predictions unchanged; images not in PLAN are left unreviewed.
Finally writes the project's JSON export (what a user downloads) to EXPORT.
"""

import json
import sys
import uuid

import requests
from label_studio_sdk import LabelStudio


def access_token(base: str, email: str, password: str) -> str:
    s = requests.Session()
    s.get(f"{base}/user/login/")
    r = s.post(
        f"{base}/user/login/",
        data={"email": email, "password": password, "csrfmiddlewaretoken": s.cookies.get("csrftoken")},
        headers={"Referer": f"{base}/user/login/"},
        allow_redirects=False,
    )
    r.raise_for_status()
    r = s.post(f"{base}/api/token/", headers={"X-CSRFToken": s.cookies.get("csrftoken"), "Referer": f"{base}/"})
    r.raise_for_status()
    return r.json()["token"]


def apply(result: list[dict], ops: list[dict]) -> list[dict]:
    out = [dict(r, value=dict(r["value"])) for r in result]
    for op in ops:
        of_mask = [r for r in out if r["id"].startswith(f"m{op.get('mask')}-")]
        if op["op"] == "relabel":
            for r in of_mask:
                r["value"]["polygonlabels"] = [op["label"]]
        elif op["op"] == "delete":
            out = [r for r in out if r not in of_mask]
        elif op["op"] == "move":
            for r in of_mask:
                r["value"]["points"] = [[x + op["dx"], y + op["dy"]] for x, y in r["value"]["points"]]
        elif op["op"] == "add":
            like = out[0] if out else result[0]
            out.append(
                {
                    **{k: like[k] for k in ("from_name", "to_name", "original_width", "original_height")},
                    "id": uuid.uuid4().hex[:10],
                    "type": "polygonlabels",
                    "image_rotation": 0,
                    "value": {"points": op["points"], "polygonlabels": [op["label"]], "closed": True},
                }
            )
        else:
            raise ValueError(f"unknown op {op}")
    return out


def main(base, email, password, tasks_file, config_file, plan_file, export_file):
    ls = LabelStudio(base_url=base, api_key=access_token(base, email, password))
    with open(config_file) as f:
        project = ls.projects.create(title="segflow review", label_config=f.read())
    with open(tasks_file) as f:
        ls.projects.import_tasks(id=project.id, request=json.load(f))
    with open(plan_file) as f:
        plan = json.load(f)
    for task in ls.tasks.list(project=project.id, fields="all"):
        ops = plan.get(str(task.data["segflow_image_id"]))
        if ops is None:
            continue
        pred = task.predictions[0]
        result = pred["result"] if isinstance(pred, dict) else pred.result
        ls.annotations.create(id=task.id, result=apply(result, ops), was_cancelled=False)
    with open(export_file, "w") as f:
        json.dump(ls.projects.exports.as_json(project.id), f)


if __name__ == "__main__":
    main(*sys.argv[1:8])
