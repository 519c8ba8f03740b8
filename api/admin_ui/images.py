"""The /admin pages' images of a job: thumbnails, the files at full size (the result
also as a download), and the loss curve (SVG).

An image is named ``content``, ``style-N``, ``preview`` or ``result``;
``shared.admin_reads.job_image_file`` says which file that is (for the preview
and the result, only the one the job's row names). Routes on the page's
blueprint, behind its login guard.
"""

from __future__ import annotations

from flask import Response, request, send_file

from api.admin_ui.loss_chart import loss_chart_svg
from api.admin_ui.thumbnails import THUMB_SIZES, ThumbnailCache, placeholder_svg
from api.admin_ui.views import blueprint
from api.services import db_session, services
from api.uploads import serve_input, serve_input_bytes
from shared import admin_reads, job_store, loss_series
from shared.errors import InvalidInputError, NotFoundError
from shared.job_store import parse_job_id

_thumbs = ThumbnailCache()


@blueprint.get("/jobs/<job_id>/thumbs/<name>")
def thumbnail(job_id: str, name: str) -> Response:
    """A JPEG thumbnail (``?size=96`` or 320); an SVG placeholder when the file is gone."""
    parsed = parse_job_id(job_id)
    file_name = admin_reads.job_image_file(db_session(), parsed, name)
    raw_size = request.args.get("size", str(THUMB_SIZES[0]))
    if raw_size not in {str(s) for s in THUMB_SIZES}:
        raise InvalidInputError(
            f"size: must be one of {', '.join(map(str, THUMB_SIZES))}", field="size"
        )
    size = int(raw_size)
    changing = name == "preview"
    data = _thumbs.thumbnail(services().storage, parsed, file_name, size, cache=not changing)
    if data is None:
        if job_store.files_deleted(db_session(), parsed):
            label = "files deleted"
        else:
            label = "no preview yet" if changing else "no file"
        response = Response(placeholder_svg(size, label), mimetype="image/svg+xml")
        response.headers["Cache-Control"] = "no-store"
        return response
    response = Response(data, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "no-store" if changing else "private, max-age=86400"
    return response


@blueprint.get("/jobs/<job_id>/files/<name>")
def image(job_id: str, name: str) -> Response:
    """A job's image at full size (inputs as uploaded, preview and result as PNG);
    ``?download=1``: the result (or preview) as a file to save, ``<job id>-<name>.png``."""
    parsed = parse_job_id(job_id)
    file_name = admin_reads.job_image_file(db_session(), parsed, name)
    storage = services().storage
    is_input = name == "content" or name.startswith("style-")
    download = request.args.get("download") == "1" and not is_input
    path = storage.local_path(parsed, file_name)
    if path is None:  # an object store: the bytes, read once
        try:
            data = storage.get(parsed, file_name)
        except NotFoundError:
            raise NotFoundError(
                f"job {job_id} has no {name} file (never written, or deleted)"
            ) from None
        if is_input:
            return serve_input_bytes(data)  # as uploaded: its own type, never sniffed
        response = Response(data, mimetype="image/png")
        response.headers["Cache-Control"] = "no-cache"
        if download:
            response.headers["Content-Disposition"] = f'attachment; filename="{parsed}-{name}.png"'
        return response
    if not path.is_file():
        raise NotFoundError(f"job {job_id} has no {name} file (never written, or deleted)")
    if is_input:
        return serve_input(path)  # as uploaded: its own type, never sniffed
    return send_file(
        path,
        max_age=0,
        mimetype="image/png",
        as_attachment=download,
        download_name=f"{parsed}-{name}.png",
    )


@blueprint.get("/jobs/<job_id>/losses.svg")
def losses(job_id: str) -> Response:
    """The job's loss curve, every attempt (``?v=`` only tells a browser it changed)."""
    session = db_session()
    job = job_store.get_job(session, parse_job_id(job_id), client_id=None)
    svg = loss_chart_svg(loss_series.read_losses(session, job.id), job.iterations)
    response = Response(svg, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "no-store"
    return response
