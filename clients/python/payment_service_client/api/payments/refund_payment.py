from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.problem import Problem
from ...models.refund_request import RefundRequest
from ...models.refund_response import RefundResponse
from ...types import UNSET, Response, Unset


def _get_kwargs(
    transaction_id: str,
    *,
    body: None | RefundRequest | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if not isinstance(idempotency_key, Unset):
        headers["Idempotency-Key"] = idempotency_key

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/api/v1/payments/{transaction_id}/refund".format(
            transaction_id=quote(str(transaction_id), safe=""),
        ),
    }

    if isinstance(body, RefundRequest):
        _kwargs["json"] = body.to_dict()
    else:
        _kwargs["json"] = body

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Problem | RefundResponse | None:
    if response.status_code == 200:
        response_200 = RefundResponse.from_dict(response.json())

        return response_200

    if response.status_code == 202:
        response_202 = RefundResponse.from_dict(response.json())

        return response_202

    if response.status_code == 400:
        response_400 = Problem.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = Problem.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = Problem.from_dict(response.json())

        return response_403

    if response.status_code == 404:
        response_404 = Problem.from_dict(response.json())

        return response_404

    if response.status_code == 409:
        response_409 = Problem.from_dict(response.json())

        return response_409

    if response.status_code == 413:
        response_413 = Problem.from_dict(response.json())

        return response_413

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
) -> Response[Problem | RefundResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    transaction_id: str,
    *,
    client: AuthenticatedClient,
    body: None | RefundRequest | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> Response[Problem | RefundResponse]:
    """Refund a payment

     Refund part (`amount`) or all (no `amount`) of what remains of a captured payment.

    Args:
        transaction_id (str): The payment's id, `txn_` and 32 hex digits; anything that is not one
            of yours (another merchant's, unknown, or not shaped like an id) answers 404.
        idempotency_key (None | str | Unset): Retry-safe key (1-255 printable ASCII), scoped to
            the merchant, kept 24 h.
        body (None | RefundRequest | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | RefundResponse]
    """

    kwargs = _get_kwargs(
        transaction_id=transaction_id,
        body=body,
        idempotency_key=idempotency_key,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    transaction_id: str,
    *,
    client: AuthenticatedClient,
    body: None | RefundRequest | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> Problem | RefundResponse | None:
    """Refund a payment

     Refund part (`amount`) or all (no `amount`) of what remains of a captured payment.

    Args:
        transaction_id (str): The payment's id, `txn_` and 32 hex digits; anything that is not one
            of yours (another merchant's, unknown, or not shaped like an id) answers 404.
        idempotency_key (None | str | Unset): Retry-safe key (1-255 printable ASCII), scoped to
            the merchant, kept 24 h.
        body (None | RefundRequest | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | RefundResponse
    """

    return sync_detailed(
        transaction_id=transaction_id,
        client=client,
        body=body,
        idempotency_key=idempotency_key,
    ).parsed


async def asyncio_detailed(
    transaction_id: str,
    *,
    client: AuthenticatedClient,
    body: None | RefundRequest | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> Response[Problem | RefundResponse]:
    """Refund a payment

     Refund part (`amount`) or all (no `amount`) of what remains of a captured payment.

    Args:
        transaction_id (str): The payment's id, `txn_` and 32 hex digits; anything that is not one
            of yours (another merchant's, unknown, or not shaped like an id) answers 404.
        idempotency_key (None | str | Unset): Retry-safe key (1-255 printable ASCII), scoped to
            the merchant, kept 24 h.
        body (None | RefundRequest | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | RefundResponse]
    """

    kwargs = _get_kwargs(
        transaction_id=transaction_id,
        body=body,
        idempotency_key=idempotency_key,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    transaction_id: str,
    *,
    client: AuthenticatedClient,
    body: None | RefundRequest | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> Problem | RefundResponse | None:
    """Refund a payment

     Refund part (`amount`) or all (no `amount`) of what remains of a captured payment.

    Args:
        transaction_id (str): The payment's id, `txn_` and 32 hex digits; anything that is not one
            of yours (another merchant's, unknown, or not shaped like an id) answers 404.
        idempotency_key (None | str | Unset): Retry-safe key (1-255 printable ASCII), scoped to
            the merchant, kept 24 h.
        body (None | RefundRequest | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | RefundResponse
    """

    return (
        await asyncio_detailed(
            transaction_id=transaction_id,
            client=client,
            body=body,
            idempotency_key=idempotency_key,
        )
    ).parsed
