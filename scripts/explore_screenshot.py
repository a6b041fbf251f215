#!/usr/bin/env python3
"""Screenshot of the ``zfscratch explore`` page in headless Chromium (the README's docs/img/explore.png).

Starts ``zfscratch explore --no-browser`` on a free port, waits for the top-9 scan, picks an image, a
layer and a map, runs the occlusion sweep, places the occluder, turns the rotation slider, and saves
a PNG. Needs Selenium (``pip install 'zfscratch[explore]'``) and Debian's ``chromium`` +
``chromium-driver``.

Usage::

    python scripts/explore_screenshot.py --weights W.npz [--data SPEC] [--image 3] [--layer 3]
        [--out docs/img/explore.png] [-- extra explore options]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--image", type=int, default=0, help="dataset image index to show")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--map-rank", type=int, default=0, help="which map of the sorted grid (0 = strongest)")
    ap.add_argument("--rotation", type=int, default=20)
    ap.add_argument("--out", default="docs/img/explore.png")
    ap.add_argument("--width", type=int, default=1480)
    ap.add_argument("--height", type=int, default=1060)
    ap.add_argument("extra", nargs="*", help="more zfscratch explore options (after --)")
    a = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cmd = [sys.executable, "-m", "zfscratch", "explore", "--weights", a.weights, "--port", "0", "--no-browser"]
    if a.data:
        cmd += ["--data", a.data]
    p = subprocess.Popen(cmd + a.extra, stdout=subprocess.PIPE, text=True)
    url = p.stdout.readline().split()[-1]
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for o in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={a.width},{a.height}", "--hide-scrollbars"):
        opts.add_argument(o)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        wait = WebDriverWait(drv, 1800)
        drv.get(url)
        wait.until(lambda d: "ready" in d.find_element(By.ID, "topk-text").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thumbs img")) > 0)
        drv.execute_script(f"loadImage('d{a.image}')")
        time.sleep(3)
        drv.find_element(By.CSS_SELECTOR, f"#layers button[data-layer='{a.layer}']").click()
        time.sleep(3)
        tiles = drv.find_elements(By.CSS_SELECTOR, "#maps .tile")
        tiles[a.map_rank].click()
        wait.until(lambda d: d.execute_script("return document.getElementById('topk').naturalWidth") > 0)
        drv.find_element(By.ID, "sweep").click()
        wait.until(lambda d: "positions" in d.find_element(By.ID, "sweep-out").text)
        stage = drv.find_element(By.ID, "stage")
        ActionChains(drv).move_to_element_with_offset(stage, 40, -60).click_and_hold().release().perform()
        drv.execute_script(f"document.getElementById('rotation').value = '{a.rotation}'; invariance();")
        time.sleep(4)
        drv.save_screenshot(a.out)
        print(f"screenshot -> {a.out}")
    finally:
        drv.quit()
        p.terminate()
        p.wait(30)


if __name__ == "__main__":
    main()
