"""Sends HL7 v2 result messages with python-hl7's MLLP client
(hl7.client.MLLPClient), as a Mindray-style analyzer does, and prints the
acknowledgement code (MSA-1) and the control id it names (MSA-2) of each
reply, one line a message:

    hl7_send.py PORT

The messages, in order: a patient result (ORU^R01, MSH-16 = 0), the same
message sent again (its ACK "lost"), a QC result (MSH-16 = 2), and an
ADT^A01 that is not a result.
"""

import sys

try:
    import hl7
    from hl7.client import MLLPClient
except ImportError:
    sys.exit("missing Python package: python3 -m pip install hl7")

PATIENT = "\r".join([
    "MSH|^~\\&|BS-480|Lab1|LIS|Kouan|20261203101500||ORU^R01|1001|P|2.3.1||||0||ASCII|||",
    "PID|1||PAT-42",
    "OBR|1|BC-7781|88|^|N||20261203100000",
    "OBX|1|NM|GLU^Glucose||5.6|mmol/L|3.9-6.1|N|||F|||20261203101000",
    "NTE|1||fasting sample",
    "OBX|2|NM|ALT^Alanine aminotransferase||27|U/L|0-40|N|||F|||20261203101010",
]) + "\r"

QC = "\r".join([
    "MSH|^~\\&|BS-480|Lab1|LIS|Kouan|20261203102000||ORU^R01|1002|P|2.3.1||||2||ASCII|||",
    "OBR|1|QC-L1|89|^|N||20261203101900",
    "OBX|1|NM|GLU^Glucose||5.1|mmol/L|4.8-5.4|N|||F|||20261203101930",
]) + "\r"

ADT = "\r".join([
    "MSH|^~\\&|HIS|Ward|LIS|Kouan|20261203103000||ADT^A01|1003|P|2.3.1",
    "PID|1||PAT-43",
]) + "\r"


def main():
    port = int(sys.argv[1])
    with MLLPClient("127.0.0.1", port) as client:
        for message in [PATIENT, PATIENT, QC, ADT]:
            # Parsed first: what is sent is python-hl7's rendering of it.
            reply = client.send_message(hl7.parse(message))
            ack = hl7.parse(reply.strip(b"\x0b\x1c\r").decode())
            msa = ack.segment("MSA")
            print(msa[1], msa[2])


if __name__ == "__main__":
    main()
