import datetime
from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.list_payments_metadata import ListPaymentsMetadata
from ...models.payment_list import PaymentList
from ...models.payment_status import PaymentStatus
from ...models.problem import Problem
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    limit: int | Unset = 10,
    starting_after: str | Unset = UNSET,
    ending_before: str | Unset = UNSET,
    status: PaymentStatus | Unset = UNSET,
    createdgte: datetime.datetime | Unset = UNSET,
    createdgt: datetime.datetime | Unset = UNSET,
    createdlte: datetime.datetime | Unset = UNSET,
    createdlt: datetime.datetime | Unset = UNSET,
    metadata: ListPaymentsMetadata | Unset = UNSET,
) -> dict[str, Any]:

    params: dict[str, Any] = {}

    params["limit"] = limit

    params["starting_after"] = starting_after

    params["ending_before"] = ending_before

    json_status: str | Unset = UNSET
    if not isinstance(status, Unset):
        json_status = status.value

    params["status"] = json_status

    json_createdgte: str | Unset = UNSET
    if not isinstance(createdgte, Unset):
        json_createdgte = createdgte.isoformat()
    params["created[gte]"] = json_createdgte

    json_createdgt: str | Unset = UNSET
    if not isinstance(createdgt, Unset):
        json_createdgt = createdgt.isoformat()
    params["created[gt]"] = json_createdgt

    json_createdlte: str | Unset = UNSET
    if not isinstance(createdlte, Unset):
        json_createdlte = createdlte.isoformat()
    params["created[lte]"] = json_createdlte

    json_createdlt: str | Unset = UNSET
    if not isinstance(createdlt, Unset):
        json_createdlt = createdlt.isoformat()
    params["created[lt]"] = json_createdlt

    json_metadata: dict[str, Any] | Unset = UNSET
    if not isinstance(metadata, Unset):
        json_metadata = metadata.to_dict()
    if not isinstance(json_metadata, Unset):
        params.update(json_metadata)

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/api/v1/payments",
        "params": params,
    }

    return _kwargs


def _parse_response(*, client: AuthenticatedClient | Client, response: httpx.Response) -> PaymentList | Problem | None:
    if response.status_code == 200:
        response_200 = PaymentList.from_dict(response.json())

        return response_200

    if response.status_code == 401:
        response_401 = Problem.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = Problem.from_dict(response.json())

        return response_403

    if response.status_code == 422:
        response_422 = Problem.from_dict(response.json())

        return response_422

    if response.status_code == 500:
        response_500 = Problem.from_dict(response.json())

        return response_500

    if response.status_code == 503:
        response_503 = Problem.from_dict(response.json())

        return response_503

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[PaymentList | Problem]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    limit: int | Unset = 10,
    starting_after: str | Unset = UNSET,
    ending_before: str | Unset = UNSET,
    status: PaymentStatus | Unset = UNSET,
    createdgte: datetime.datetime | Unset = UNSET,
    createdgt: datetime.datetime | Unset = UNSET,
    createdlte: datetime.datetime | Unset = UNSET,
    createdlt: datetime.datetime | Unset = UNSET,
    metadata: ListPaymentsMetadata | Unset = UNSET,
) -> Response[PaymentList | Problem]:
    """List payments

     Your payments, newest first, a page at a time (keyset pagination: pages stay put
    while new payments arrive). Follow `has_more` with `starting_after` set to the last
    `transaction_id` of the page (or `ending_before` set to the first, to go back).

    Args:
        limit (int | Unset):  Default: 10.
        starting_after (str | Unset):
        ending_before (str | Unset):
        status (PaymentStatus | Unset): Where a payment stands (docs/api.md, "Payments and their
            statuses").
        createdgte (datetime.datetime | Unset):
        createdgt (datetime.datetime | Unset):
        createdlte (datetime.datetime | Unset):
        createdlt (datetime.datetime | Unset):
        metadata (ListPaymentsMetadata | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[PaymentList | Problem]
    """

    kwargs = _get_kwargs(
        limit=limit,
        starting_after=starting_after,
        ending_before=ending_before,
        status=status,
        createdgte=createdgte,
        createdgt=createdgt,
        createdlte=createdlte,
        createdlt=createdlt,
        metadata=metadata,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    limit: int | Unset = 10,
    starting_after: str | Unset = UNSET,
    ending_before: str | Unset = UNSET,
    status: PaymentStatus | Unset = UNSET,
    createdgte: datetime.datetime | Unset = UNSET,
    createdgt: datetime.datetime | Unset = UNSET,
    createdlte: datetime.datetime | Unset = UNSET,
    createdlt: datetime.datetime | Unset = UNSET,
    metadata: ListPaymentsMetadata | Unset = UNSET,
) -> PaymentList | Problem | None:
    """List payments

     Your payments, newest first, a page at a time (keyset pagination: pages stay put
    while new payments arrive). Follow `has_more` with `starting_after` set to the last
    `transaction_id` of the page (or `ending_before` set to the first, to go back).

    Args:
        limit (int | Unset):  Default: 10.
        starting_after (str | Unset):
        ending_before (str | Unset):
        status (PaymentStatus | Unset): Where a payment stands (docs/api.md, "Payments and their
            statuses").
        createdgte (datetime.datetime | Unset):
        createdgt (datetime.datetime | Unset):
        createdlte (datetime.datetime | Unset):
        createdlt (datetime.datetime | Unset):
        metadata (ListPaymentsMetadata | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        PaymentList | Problem
    """

    return sync_detailed(
        client=client,
        limit=limit,
        starting_after=starting_after,
        ending_before=ending_before,
        status=status,
        createdgte=createdgte,
        createdgt=createdgt,
        createdlte=createdlte,
        createdlt=createdlt,
        metadata=metadata,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    limit: int | Unset = 10,
    starting_after: str | Unset = UNSET,
    ending_before: str | Unset = UNSET,
    status: PaymentStatus | Unset = UNSET,
    createdgte: datetime.datetime | Unset = UNSET,
    createdgt: datetime.datetime | Unset = UNSET,
    createdlte: datetime.datetime | Unset = UNSET,
    createdlt: datetime.datetime | Unset = UNSET,
    metadata: ListPaymentsMetadata | Unset = UNSET,
) -> Response[PaymentList | Problem]:
    """List payments

     Your payments, newest first, a page at a time (keyset pagination: pages stay put
    while new payments arrive). Follow `has_more` with `starting_after` set to the last
    `transaction_id` of the page (or `ending_before` set to the first, to go back).

    Args:
        limit (int | Unset):  Default: 10.
        starting_after (str | Unset):
        ending_before (str | Unset):
        status (PaymentStatus | Unset): Where a payment stands (docs/api.md, "Payments and their
            statuses").
        createdgte (datetime.datetime | Unset):
        createdgt (datetime.datetime | Unset):
        createdlte (datetime.datetime | Unset):
        createdlt (datetime.datetime | Unset):
        metadata (ListPaymentsMetadata | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[PaymentList | Problem]
    """

    kwargs = _get_kwargs(
        limit=limit,
        starting_after=starting_after,
        ending_before=ending_before,
        status=status,
        createdgte=createdgte,
        createdgt=createdgt,
        createdlte=createdlte,
        createdlt=createdlt,
        metadata=metadata,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    limit: int | Unset = 10,
    starting_after: str | Unset = UNSET,
    ending_before: str | Unset = UNSET,
    status: PaymentStatus | Unset = UNSET,
    createdgte: datetime.datetime | Unset = UNSET,
    createdgt: datetime.datetime | Unset = UNSET,
    createdlte: datetime.datetime | Unset = UNSET,
    createdlt: datetime.datetime | Unset = UNSET,
    metadata: ListPaymentsMetadata | Unset = UNSET,
) -> PaymentList | Problem | None:
    """List payments

     Your payments, newest first, a page at a time (keyset pagination: pages stay put
    while new payments arrive). Follow `has_more` with `starting_after` set to the last
    `transaction_id` of the page (or `ending_before` set to the first, to go back).

    Args:
        limit (int | Unset):  Default: 10.
        starting_after (str | Unset):
        ending_before (str | Unset):
        status (PaymentStatus | Unset): Where a payment stands (docs/api.md, "Payments and their
            statuses").
        createdgte (datetime.datetime | Unset):
        createdgt (datetime.datetime | Unset):
        createdlte (datetime.datetime | Unset):
        createdlt (datetime.datetime | Unset):
        metadata (ListPaymentsMetadata | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        PaymentList | Problem
    """

    return (
        await asyncio_detailed(
            client=client,
            limit=limit,
            starting_after=starting_after,
            ending_before=ending_before,
            status=status,
            createdgte=createdgte,
            createdgt=createdgt,
            createdlte=createdlte,
            createdlt=createdlt,
            metadata=metadata,
        )
    ).parsed
