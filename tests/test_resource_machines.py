"""The resource machines stepped by hand: exact effects, queues, names from the other side."""

from __future__ import annotations

import pytest

from iotfsm.adapters.codec import Codec
from iotfsm.fsm import CancelTimer, Connected, Disconnected, Log, Publish, SetTimer, Stepper
from iotfsm.machines import all_features
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.resources import (
    DOWNLOAD_DEVICE,
    DOWNLOAD_PLATFORM,
    UPLOAD_DEVICE,
    UPLOAD_PLATFORM,
    CreateUploadTask,
    CreateUploadTaskRsp,
    DeliverResource,
    DownloadTask,
    GetDownloadTask,
    GetDownloadTaskRsp,
    GrantUpload,
    OfferResource,
    ReportDownloadProgress,
    ReportDownloadProgressRsp,
    ReportUploadProgress,
    ReportUploadProgressRsp,
    ResourceDelivered,
    ResourceProgress,
    SendDownloadTask,
    Upload,
    UploadFinished,
    UploadReported,
)
from iotfsm.machines.transfer import (
    CancelTransfer,
    StartDownload,
    StartUpload,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
)

KEY = DeviceKey("P1", "dev-1")
MD5 = "2af9455c6051c337cbfba7fbc0e1abc1"
CODEC = Codec(all_features())


def test_seed_examples_decode_on_the_shared_topic_and_emit_ints() -> None:
    feature, msg = CODEC.decode_any(
        ["resource_upload", "resource_download"],
        "up",
        b'{"type":"report_upload_progress","name":"zxc","progress":{"state":"uploading","percent":89,"result_code":0,"result_msg":""}}',
    )
    assert feature == "resource_upload"
    assert msg == ReportUploadProgress("zxc", ResourceProgress("uploading", 89, 0, ""))
    feature, msg = CODEC.decode_any(
        ["resource_upload", "resource_download"], "up", b'{"type":"get_download_task"}'
    )
    assert (feature, msg) == ("resource_download", GetDownloadTask())
    assert CODEC.encode(ReportDownloadProgress("AAAA", ResourceProgress("downloading", 89))) == (
        b'{"type":"report_download_progress","name":"AAAA","progress":{"state":"downloading","percent":89,"result_code":0,"result_msg":""}}'
    )
    assert CODEC.encode(ReportUploadProgress("zxc", ResourceProgress("done"))) == (
        b'{"type":"report_upload_progress","name":"zxc","progress":{"state":"done","result_code":0,"result_msg":""}}'
    )


# ---- device upload ----------------------------------------------------------------------------


def test_upload_creates_puts_reports_and_waits_for_each_answer() -> None:
    s = Stepper(UPLOAD_DEVICE, key=KEY)
    assert s.step(Upload("cap.jpg", "/data/cap.jpg", 100, MD5)) == []  # offline: queued
    assert s.step(Connected()) == [
        Publish(CreateUploadTask(100, "cap.jpg", MD5), 1),
        SetTimer("rsp", 10.0, 1),
    ]
    assert s.step(CreateUploadTaskRsp(100, "cap.jpg", MD5, "http://f/u?sig=1")) == [
        CancelTimer("rsp"),
        StartUpload(1, "http://f/u?sig=1", "/data/cap.jpg", 100, MD5),
        Publish(ReportUploadProgress("cap.jpg", ResourceProgress("uploading", 0)), 0),
    ]
    s.clock.advance(2)
    assert s.step(TransferProgress(1, 100, 100)) == [
        Publish(ReportUploadProgress("cap.jpg", ResourceProgress("uploading", 100)), 0)
    ]
    assert s.step(ReportUploadProgressRsp(0, "ok")) == []
    assert s.step(TransferDone(1, "/data/cap.jpg")) == [
        Publish(ReportUploadProgress("cap.jpg", ResourceProgress("done")), 1),
        SetTimer("final", 5.0, 2),
        UploadFinished("cap.jpg", True, 0, "done"),
    ]
    assert s.state == "finishing"
    assert s.step(ReportUploadProgressRsp(0, "ok")) == [CancelTimer("final")]
    assert s.state == "idle"


def test_an_unanswered_final_report_is_sent_again_then_the_next_upload_starts() -> None:
    s = Stepper(UPLOAD_DEVICE, key=KEY)
    s.step(Connected())
    s.step(Upload("a", "/a", 10, MD5))
    s.step(Upload("b", "/b", 20, MD5))
    s.step(CreateUploadTaskRsp(10, "a", MD5, "http://f/a"))
    s.step(TransferFailed(1, -3, "HTTP 403"))
    final = Publish(ReportUploadProgress("a", ResourceProgress("fail", None, -3, "HTTP 403")), 1)
    assert s.advance(5.0) == [final, SetTimer("final", 5.0, 3)]
    s.advance(5.0)
    assert s.advance(5.0) == [
        UploadFinished("a", False, -1, "the platform did not answer"),
        Publish(CreateUploadTask(20, "b", MD5), 1),
        SetTimer("rsp", 10.0, 5),
    ]
    assert s.state == "creating"


def test_a_non_zero_answer_aborts_the_upload() -> None:
    s = Stepper(UPLOAD_DEVICE, key=KEY)
    s.step(Connected())
    s.step(Upload("a", "/a", 10, MD5))
    s.step(CreateUploadTaskRsp(10, "a", MD5, "http://f/a"))
    out = s.step(ReportUploadProgressRsp(5, "quota"))
    assert out[0] == CancelTransfer(1)
    assert out[-1] == UploadFinished("a", False, -1, "the platform answered 5: quota")
    assert s.state == "finishing"


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "a/b", "a\\b", "nul\x00", "x" * 65, "", ".hidden"]
)
def test_hostile_upload_names_are_refused_on_the_device(name: str) -> None:
    s = Stepper(UPLOAD_DEVICE, key=KEY)
    s.step(Connected())
    out = s.step(Upload(name, "/a", 10, MD5))
    assert isinstance(out[0], UploadFinished) and not out[0].ok and "refused" in out[0].message
    assert s.state == "idle" and s.ctx.queue == []


def test_a_mismatched_create_answer_is_ignored() -> None:
    s = Stepper(UPLOAD_DEVICE, key=KEY)
    s.step(Connected())
    s.step(Upload("a", "/a", 10, MD5))
    assert s.step(CreateUploadTaskRsp(10, "other", MD5, "http://f/x")) == [
        Log.info("ignored create_upload_task_rsp for 'other': not the current upload")
    ]
    assert s.state == "creating"


# ---- platform upload --------------------------------------------------------------------------


def test_platform_grants_uploads_and_answers_every_report() -> None:
    s = Stepper(UPLOAD_PLATFORM, key=KEY)
    assert s.step(CreateUploadTask(100, "cap.jpg", MD5.upper())) == [
        GrantUpload("cap.jpg", 100, MD5),
        SetTimer("silence", 300.0, 1),
    ]
    report = ReportUploadProgress("cap.jpg", ResourceProgress("uploading", 50))
    assert s.step(report) == [
        Publish(ReportUploadProgressRsp(0, "ok"), 0),
        UploadReported("cap.jpg", "uploading", 50, 0, ""),
        SetTimer("silence", 300.0, 2),  # progress: the device is alive
    ]
    done = ReportUploadProgress("cap.jpg", ResourceProgress("done"))
    assert s.step(done)[:2] == [
        CancelTimer("silence"),
        Publish(ReportUploadProgressRsp(0, "ok"), 0),
    ]
    assert s.state == "idle"
    why = "name '../x' refused: it contains a path separator"
    assert s.step(CreateUploadTask(10, "../x", MD5)) == [
        Publish(CreateUploadTaskRsp(10, "../x", MD5, "", -6, why), 1),
        Log.warning(f"refused create_upload_task: {why}"),
    ]


# ---- device download --------------------------------------------------------------------------


def test_download_asks_on_connect_takes_pushes_and_delivers_in_order() -> None:
    s = Stepper(DOWNLOAD_DEVICE, key=KEY)
    assert s.step(Connected()) == [Publish(GetDownloadTask(), 1), SetTimer("rsp", 10.0, 1)]
    assert s.step(GetDownloadTaskRsp(500, "faces.db", MD5, "http://f/1")) == [
        CancelTimer("rsp"),
        StartDownload(1, "http://f/1", 500, MD5, "faces.db", "faces.db"),
    ]
    assert s.step(DownloadTask(300, "music.mp3", MD5, "http://f/2")) == []  # queued
    assert s.step(DownloadTask(500, "faces.db", MD5, "http://f/1b")) == []  # a duplicate: ignored
    assert s.step(TransferStarted(1, 0, 500)) == [
        Publish(ReportDownloadProgress("faces.db", ResourceProgress("downloading", 0)), 0)
    ]
    assert s.step(TransferDone(1, "/s/faces.db/data")) == [
        DeliverResource("faces.db", "/s/faces.db/data", MD5),
        Publish(ReportDownloadProgress("faces.db", ResourceProgress("done")), 1),
        StartDownload(2, "http://f/2", 300, MD5, "music.mp3", "music.mp3"),
    ]
    assert s.step(TransferDone(2, "/s/music.mp3/data"))[0] == DeliverResource(
        "music.mp3", "/s/music.mp3/data", MD5
    )
    assert s.state == "idle"


def test_a_cut_download_resumes_by_itself_then_gives_up_with_a_report() -> None:
    s = Stepper(DOWNLOAD_DEVICE, key=KEY)
    s.step(Connected())
    s.step(GetDownloadTaskRsp(500, "f", MD5, "http://f/1"))
    assert s.step(TransferFailed(1, -1, "cut")) == [SetTimer("retry", 5.0, 2)]
    assert s.advance(5.0) == [StartDownload(2, "http://f/1", 500, MD5, "f", "f")]
    s.step(TransferFailed(2, -1, "cut"))
    s.advance(10.0)
    s.step(TransferFailed(3, -1, "cut"))
    s.advance(20.0)
    assert s.step(TransferFailed(4, -1, "cut")) == [
        Publish(ReportDownloadProgress("f", ResourceProgress("fail", None, -1, "cut")), 1),
        Log.warning("download of f failed (-1): cut"),
    ]
    assert s.state == "idle"


def test_a_hostile_task_is_refused_with_a_fail_report() -> None:
    s = Stepper(DOWNLOAD_DEVICE, key=KEY)
    s.step(Connected())
    out = s.step(DownloadTask(10, "../../etc/shadow", MD5, "http://f/x"))
    assert out[0] == Publish(
        ReportDownloadProgress(
            "../../etc/shadow",
            ResourceProgress(
                "fail", None, -2, "name '../../etc/shadow' refused: it contains a path separator"
            ),
        ),
        1,
    )
    assert s.ctx.queue == [] and s.ctx.current is None


def test_stale_outcomes_and_reconnects() -> None:
    s = Stepper(DOWNLOAD_DEVICE, key=KEY)
    s.step(Connected())
    s.step(GetDownloadTaskRsp(500, "f", MD5, "http://f/1"))
    assert s.machine.step(s.session, TransferDone(9, "/x")) is None
    assert s.step(Disconnected()) == []
    assert s.step(Connected()) == [Publish(GetDownloadTask(), 1)]
    assert s.state == "downloading"


# ---- platform download ------------------------------------------------------------------------


def test_platform_queues_pushes_answers_and_records_outcomes() -> None:
    s = Stepper(DOWNLOAD_PLATFORM, key=KEY)
    assert s.step(GetDownloadTask()) == []  # nothing queued: no answer
    a = OfferResource("faces.db", "res-1", 500, MD5)
    b = OfferResource("music.mp3", "res-2", 300, MD5)
    assert s.step(a) == [
        SendDownloadTask("faces.db", "res-1", 500, MD5, False),
        SetTimer("silence", 15.0, 1),
    ]
    assert s.step(b) == []
    assert s.step(GetDownloadTask()) == [
        SendDownloadTask("faces.db", "res-1", 500, MD5, True),
        SetTimer("silence", 30.0, 2),
    ]
    rsp = Publish(ReportDownloadProgressRsp(0, "ok"), 0)
    assert s.step(ReportDownloadProgress("faces.db", ResourceProgress("downloading", 40)))[0] == rsp
    assert s.ctx.percent == 40
    assert s.step(ReportDownloadProgress("faces.db", ResourceProgress("done"))) == [
        rsp,
        ResourceDelivered("faces.db", True, 0, "done"),
        SendDownloadTask("music.mp3", "res-2", 300, MD5, False),
        SetTimer("silence", 15.0, 4),
    ]
    assert s.step(
        ReportDownloadProgress("music.mp3", ResourceProgress("fail", None, -4, "md5"))
    ) == [
        CancelTimer("silence"),
        rsp,
        ResourceDelivered("music.mp3", False, -4, "md5"),
    ]
    assert s.state == "idle"
    assert s.step(ReportDownloadProgress("unknown", ResourceProgress("done"))) == [rsp]


def test_an_unanswered_push_is_sent_again_with_backoff_then_left_for_the_next_ask() -> None:
    s = Stepper(DOWNLOAD_PLATFORM, key=KEY)
    push = SendDownloadTask("faces.db", "res-1", 500, MD5, False)
    assert s.step(OfferResource("faces.db", "res-1", 500, MD5)) == [
        push,
        SetTimer("silence", 15.0, 1),
    ]
    assert s.advance(15.0) == [push, SetTimer("silence", 30.0, 2)]
    assert s.advance(30.0) == [push, SetTimer("silence", 60.0, 3)]
    s.advance(60.0)
    s.advance(120.0)
    assert s.advance(240.0) == []  # five pushes unanswered: wait for the device to ask
    assert (s.state, len(s.ctx.queue)) == ("idle", 1)
    assert s.step(GetDownloadTask())[0] == SendDownloadTask("faces.db", "res-1", 500, MD5, True)
