"""Salesforce Outbound Messages: the SOAP 1.1 ``notifications`` call and its ``Ack``.

An outbound message is sent by a flow or workflow rule when a record changes. It carries the
org's id, the action's id and up to 100 ``Notification`` elements, each with its own id and
the record's fields that the admin chose (``sf:`` = the enterprise WSDL's sObject namespace).
Salesforce signs nothing; what can be checked is the ``OrganizationId`` (and a token the admin
puts in the endpoint URL). The parsing here is pure so that it can be checked on bytes alone.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

#: The answer Salesforce waits for; without it the message is retried for 24 h.
ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}">'
    "<soapenv:Body>"
    f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body>"
    "</soapenv:Envelope>"
).encode()


class MalformedMessage(ValueError):
    """The body is not an outbound message."""


@dataclass(frozen=True)
class Notification:
    """One changed record: the notification's id (stable across Salesforce's retries), the
    sObject type (``Opportunity``, ``Lead``...) and the fields sent, as text (``None`` for
    ``xsi:nil``)."""

    id: str
    object_type: str
    fields: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboundMessage:
    organization_id: str
    action_id: str
    notifications: list[Notification]


def parse(body: bytes) -> OutboundMessage:
    """Read an outbound message.

    A document type declaration is refused before parsing: SOAP 1.1 (section 3) forbids it in
    a message, and without one no entity can be declared, so entity expansion attacks on this
    unauthenticated endpoint have nothing to expand (the standard library parser resolves no
    external entities either).
    """
    if b"<!DOCTYPE" in body.upper():
        raise MalformedMessage("a SOAP message must not contain a document type declaration")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise MalformedMessage(f"not XML: {exc}") from exc
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise MalformedMessage("not a SOAP 1.1 envelope")
    node = root.find(f"{{{SOAP_ENV}}}Body/{{{OUTBOUND_NS}}}notifications")
    if node is None:
        raise MalformedMessage("no outbound-message notifications element in the SOAP body")
    organization_id = _text(node, "OrganizationId")
    if not organization_id:
        raise MalformedMessage("OrganizationId is missing")
    notifications = []
    for element in node.findall(f"{{{OUTBOUND_NS}}}Notification"):
        notification_id = _text(element, "Id")
        sobject = element.find(f"{{{OUTBOUND_NS}}}sObject")
        if not notification_id or sobject is None:
            raise MalformedMessage("a Notification without Id or sObject")
        object_type = sobject.get(f"{{{XSI_NS}}}type", "")
        # The type is a QName ("sf:Opportunity"); its prefix is whatever the sender bound.
        object_type = object_type.rpartition(":")[2]
        if not object_type:
            raise MalformedMessage("an sObject without xsi:type")
        fields: dict[str, str | None] = {}
        for child in sobject:
            name = child.tag.rpartition("}")[2]
            nil = child.get(f"{{{XSI_NS}}}nil") == "true"
            fields[name] = None if nil else (child.text or "")
        notifications.append(Notification(notification_id, object_type, fields))
    return OutboundMessage(organization_id, _text(node, "ActionId") or "", notifications)


def _text(node: ET.Element, name: str) -> str | None:
    child = node.find(f"{{{OUTBOUND_NS}}}{name}")
    if child is None or child.get(f"{{{XSI_NS}}}nil") == "true":
        return None
    return (child.text or "").strip()


def build(
    organization_id: str,
    action_id: str,
    instance_url: str,
    notifications: list[Notification],
) -> bytes:
    """An outbound message as Salesforce sends it (used by the test stand-in and in docs)."""
    envelope = ET.Element(f"{{{SOAP_ENV}}}Envelope")
    body = ET.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    node = ET.SubElement(body, f"{{{OUTBOUND_NS}}}notifications")
    ET.SubElement(node, f"{{{OUTBOUND_NS}}}OrganizationId").text = organization_id
    ET.SubElement(node, f"{{{OUTBOUND_NS}}}ActionId").text = action_id
    ET.SubElement(node, f"{{{OUTBOUND_NS}}}SessionId", {f"{{{XSI_NS}}}nil": "true"})
    org15 = organization_id[:15]
    ET.SubElement(
        node, f"{{{OUTBOUND_NS}}}EnterpriseUrl"
    ).text = f"{instance_url}/services/Soap/c/62.0/{org15}"
    ET.SubElement(
        node, f"{{{OUTBOUND_NS}}}PartnerUrl"
    ).text = f"{instance_url}/services/Soap/u/62.0/{org15}"
    for item in notifications:
        element = ET.SubElement(node, f"{{{OUTBOUND_NS}}}Notification")
        ET.SubElement(element, f"{{{OUTBOUND_NS}}}Id").text = item.id
        sobject = ET.SubElement(
            element, f"{{{OUTBOUND_NS}}}sObject", {f"{{{XSI_NS}}}type": f"sf:{item.object_type}"}
        )
        for name, value in item.fields.items():
            if value is None:
                ET.SubElement(sobject, f"{{{SOBJECT_NS}}}{name}", {f"{{{XSI_NS}}}nil": "true"})
            else:
                ET.SubElement(sobject, f"{{{SOBJECT_NS}}}{name}").text = value
    ET.register_namespace("soapenv", SOAP_ENV)
    ET.register_namespace("sf", SOBJECT_NS)
    ET.register_namespace("xsi", XSI_NS)
    text: bytes = ET.tostring(envelope, encoding="utf-8", xml_declaration=True)
    return text
