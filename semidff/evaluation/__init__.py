"""Evaluation of video object detectors: ImageNet VID mAP, overall and per motion-speed bucket.

``vid_map.evaluate_vid`` scores per-frame detections against per-frame ground truth with the
official VID protocol (dff-facts §4.4) and FGFA's slow / medium / fast split (§4.5).
"""
