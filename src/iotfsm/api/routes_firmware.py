"""`/firmware` (images uploaded once, kept by product and version) and `/deployments` (an
uploaded image offered to devices, without waves).

An image record (table `api_firmware`) ties a product's version to the file the file service
serves; deployments and campaigns name the version and the platform is handed the served file.
"""

from __future__ import annotations

import time

import attrs

from ..machines import ota
from ..platform import Deployment
from .endpoint import BINARY, PAGE, Answer, ApiError, Call, Endpoint, Param, Upload
from .lookup import page, product_of
from .models import DeploymentIn, DeploymentPage, Image, ImagePage

TABLE = "api_firmware"


def _version(version: str) -> str:
    problem = ota.version_problem(version)
    if problem is not None:
        raise ApiError(400, "bad_request", f"version {version[:40]!r} is refused: {problem}")
    return version


def stored_image(call: Call, product: str, version: str) -> Image:
    doc = call.ctx.platform.store.get(TABLE, f"{product}/{version}")
    if not isinstance(doc, dict):
        raise ApiError(
            404,
            "not_found",
            f"no image {product}/{version}; PUT /api/v1/firmware/{{product}}/{{version}} first",
        )
    return Image(**doc)


def upload_image(call: Call) -> Answer:
    product = product_of(call.path["product"])
    version = _version(call.path["version"])
    body: Upload = call.body
    platform = call.ctx.platform
    with call.ctx.images_lock:
        doc = platform.store.get(TABLE, f"{product}/{version}")
        if isinstance(doc, dict):
            known = Image(**doc)
            if known.md5 != body.md5 or known.size != body.size:
                raise ApiError(
                    409,
                    "conflict",
                    f"{product}/{version} was uploaded with other content "
                    f"(md5 {known.md5}); a version names one image",
                )
            return Answer(known, 200)
        ref = platform.publish_image(body.path)
        image = Image(product, version, ref.file_id, ref.size, ref.md5, round(time.time(), 3))
        platform.store.put(TABLE, f"{product}/{version}", attrs.asdict(image))
        platform.store.commit()
    return Answer(image, 201)


def list_images(call: Call) -> ImagePage:
    wanted = call.query["product"]
    found = [Image(**doc) for _, doc in call.ctx.platform.store.items(TABLE)]
    chosen = [i for i in found if wanted in (None, i.product)]
    return ImagePage(**page(chosen, call))


def get_image(call: Call) -> Image:
    return stored_image(call, product_of(call.path["product"]), call.path["version"])


def deploy(call: Call) -> Deployment:
    body: DeploymentIn = call.body
    product = product_of(body.product)
    image = stored_image(call, product, _version(body.version))
    platform = call.ctx.platform
    if body.devices != "*":
        registry = platform.registry
        unknown = [
            d for d in body.devices if not registry.open and registry.get(product, d) is None
        ]
        if unknown:
            raise ApiError(404, "not_found", f"not registered in {product}: {unknown[:5]}")
    return platform.deploy_firmware(
        product, body.devices, body.version, platform.image_path(image.file_id)
    )


def list_deployments(call: Call) -> DeploymentPage:
    wanted = call.query["product"]
    found = []
    for _, doc in call.ctx.platform.store.items("deployments"):
        if wanted in (None, doc.get("product")):
            found.append(Deployment(**{**doc, "devices": tuple(doc["devices"])}))
    return DeploymentPage(**page(found, call))


TAG = "firmware"
ENDPOINTS = (
    Endpoint(
        "PUT",
        "/firmware/{product}/{version}",
        upload_image,
        "write",
        "Upload a firmware image",
        TAG,
        Image,
        201,
        BINARY,
        also=(200,),
    ),
    Endpoint(
        "GET",
        "/firmware",
        list_images,
        "read",
        "List firmware images",
        TAG,
        ImagePage,
        query=(Param("product", str, description="only this product"), *PAGE),
    ),
    Endpoint(
        "GET",
        "/firmware/{product}/{version}",
        get_image,
        "read",
        "Show a firmware image",
        TAG,
        Image,
    ),
    Endpoint(
        "POST",
        "/deployments",
        deploy,
        "write",
        "Offer an image to devices",
        "deployments",
        Deployment,
        201,
        DeploymentIn,
    ),
    Endpoint(
        "GET",
        "/deployments",
        list_deployments,
        "read",
        "List deployments",
        "deployments",
        DeploymentPage,
        query=(Param("product", str, description="only this product"), *PAGE),
    ),
)
