"""Per-product settings: remote config (set, switch, history) and the product-wide log level;
and `/resources`: files offered to devices and uploads devices made."""

from __future__ import annotations

from ..adapters.store.config_store import ConfigError, ConfigVersion
from ..machines.names import name_problem
from .endpoint import BINARY, PAGE, ApiError, Call, Endpoint, Param, Upload
from .lookup import key_of, page, product_of
from .models import (
    ConfigEnabledIn,
    ConfigHistory,
    ConfigIn,
    ConfigOut,
    DeliveryList,
    DeliveryPage,
    LogLevelIn,
    LogLevelOut,
    UploadOut,
    UploadPage,
)


def _config(call: Call, product: str) -> ConfigOut:
    current = call.ctx.platform.product_config(product)
    return ConfigOut(current.enabled, current.version, current.payload)


def get_config(call: Call) -> ConfigOut:
    return _config(call, product_of(call.path["product"]))


def set_config(call: Call) -> ConfigVersion:
    body: ConfigIn = call.body
    try:
        version = call.ctx.platform.set_config(product_of(call.path["product"]), body.payload)
    except ConfigError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    return version


def enable_config(call: Call) -> ConfigOut:
    body: ConfigEnabledIn = call.body
    product = product_of(call.path["product"])
    call.ctx.platform.enable_config(product, body.enabled)
    return _config(call, product)


def config_history(call: Call) -> ConfigHistory:
    history = call.ctx.platform.config_history(product_of(call.path["product"]))
    return ConfigHistory(list(history))


def product_log_level(call: Call) -> LogLevelOut:
    body: LogLevelIn = call.body
    call.ctx.platform.set_product_log_level(product_of(call.path["product"]), body.level)
    return LogLevelOut(body.level)


def offer_resource(call: Call) -> DeliveryList:
    product = product_of(call.path["product"])
    devices: list[str] = call.query["device"]
    if not devices:
        raise ApiError(400, "bad_request", "name the devices: ?device=NAME (repeatable)")
    registry = call.ctx.platform.registry
    for name in devices:
        key = key_of(product, name)
        if not registry.open and registry.get(*key) is None:
            raise ApiError(404, "not_found", f"{product}/{name} is not registered")
    name = call.path["name"]
    problem = name_problem(name)
    if problem is not None:
        raise ApiError(400, "bad_request", f"resource name {name[:80]!r} is refused: {problem}")
    body: Upload = call.body
    offered = call.ctx.platform.offer_resource(product, devices, name, body.path)
    return DeliveryList(offered)


def deliveries(call: Call) -> DeliveryPage:
    q = call.query
    found = call.ctx.platform.deliveries(q["product"], q["device"])
    return DeliveryPage(**page(found, call))


def uploads(call: Call) -> UploadPage:
    q = call.query
    found = call.ctx.platform.uploads(q["product"], q["device"])
    out = [
        UploadOut(
            u.product,
            u.device,
            u.name,
            u.md5,
            u.size,
            u.state,
            u.percent,
            u.code,
            u.message,
            u.stored,
        )
        for u in found
    ]
    return UploadPage(**page(out, call))


CONFIG = "/products/{product}/config"
FILTERS = (
    Param("product", str, description="only this product"),
    Param("device", str, description="only this device"),
    *PAGE,
)

ENDPOINTS = (
    Endpoint("GET", CONFIG, get_config, "read", "A product's config", "config", ConfigOut),
    Endpoint(
        "PUT",
        CONFIG,
        set_config,
        "write",
        "Set and push a product's config",
        "config",
        body=ConfigIn,
    ),
    Endpoint(
        "PUT",
        CONFIG + "/enabled",
        enable_config,
        "write",
        "Switch remote config on or off",
        "config",
        ConfigOut,
        body=ConfigEnabledIn,
    ),
    Endpoint(
        "GET",
        CONFIG + "/history",
        config_history,
        "read",
        "A product's last config versions",
        "config",
        ConfigHistory,
    ),
    Endpoint(
        "PUT",
        "/products/{product}/log-level",
        product_log_level,
        "write",
        "Set the log level of every device of a product",
        "devices",
        LogLevelOut,
        202,
        LogLevelIn,
    ),
    Endpoint(
        "PUT",
        "/resources/{product}/{name}",
        offer_resource,
        "write",
        "Offer a file to devices",
        "resources",
        DeliveryList,
        201,
        BINARY,
        query=(Param("device", str, description="a device to offer it to", many=True),),
    ),
    Endpoint(
        "GET",
        "/resources/deliveries",
        deliveries,
        "read",
        "Files offered to devices",
        "resources",
        DeliveryPage,
        query=FILTERS,
    ),
    Endpoint(
        "GET",
        "/resources/uploads",
        uploads,
        "read",
        "Uploads devices made",
        "resources",
        UploadPage,
        query=FILTERS,
    ),
)
