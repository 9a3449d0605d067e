"""/v1/adapters and /v1/adapter-set."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from core.adapters.models import STATES
from core.keys.models import ADMIN, FORGET_READ
from server.adapters.schemas import AdapterOut, AdapterSetOut
from server.adapters.service import AdapterService
from server.auth import Principal, require
from server.dependencies import adapter_service
from server.schemas import ERROR_RESPONSES, Limit, Offset, Page, UUIDPath, check_choice

router = APIRouter(prefix="/v1", tags=["adapters"], responses=ERROR_RESPONSES)
Service = Annotated[AdapterService, Depends(adapter_service)]
Reader = Annotated[Principal, Depends(require(FORGET_READ))]
Admin = Annotated[Principal, Depends(require(ADMIN))]


@router.get("/adapters", response_model=Page[AdapterOut], summary="List trained modules, newest first")
def list_adapters(
    service: Service,
    _: Reader,
    limit: Limit = 20,
    offset: Offset = 0,
    state: Annotated[str | None, Query(description=f"One of {', '.join(STATES)}")] = None,
) -> Page[AdapterOut]:
    items, total = service.page(limit, offset, check_choice("state", state, STATES))
    return Page[AdapterOut](items=items, total=total, limit=limit, offset=offset)


@router.get("/adapters/{adapter_id}", response_model=AdapterOut, summary="One module: version, lineage, checksum")
def get_adapter(adapter_id: UUIDPath, service: Service, _: Reader) -> AdapterOut:
    return service.get(str(adapter_id))


@router.post("/adapters/{adapter_id}/activate", response_model=AdapterOut, summary="Serve this module again")
def activate_adapter(adapter_id: UUIDPath, service: Service, principal: Admin) -> AdapterOut:
    return service.set_active(str(adapter_id), True, principal.actor)


@router.post("/adapters/{adapter_id}/deactivate", response_model=AdapterOut, summary="Stop serving (roll back)")
def deactivate_adapter(adapter_id: UUIDPath, service: Service, principal: Admin) -> AdapterOut:
    return service.set_active(str(adapter_id), False, principal.actor)


@router.get("/adapter-set", response_model=AdapterSetOut, summary="The active set and the version this server serves")
def get_adapter_set(service: Service, _: Reader) -> AdapterSetOut:
    return service.current_set()
