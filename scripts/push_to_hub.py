#!/usr/bin/env python
"""Upload one ``hub_configs/<model>.<tag>/`` folder to the Hugging Face Hub.

    python scripts/push_to_hub.py hub_configs/flexnet16.cifar10 --repo-id flexconv-zoo/flexnet16.cifar10
    python scripts/push_to_hub.py hub_configs/flexnet16.cifar10 --repo-id me/flexnet16.cifar10 --dry-run

The folder is validated first (complete, loads strictly with timm, reproduces its reference logits, model
card metadata present, sha256 recorded: :func:`flexconv_zoo.hub_folder.validate_hub_folder`); nothing is uploaded otherwise. The
token comes from the environment (``HF_TOKEN``) or the huggingface_hub login cache.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', type=Path, help='hub_configs/<model>.<tag> folder')
    parser.add_argument('--repo-id', required=True, help='<org>/<model>.<tag> on the Hub')
    parser.add_argument('--revision', default=None, help='branch to push to (default: main)')
    parser.add_argument('--private', action='store_true', help='create the repo as private')
    parser.add_argument('--create-pr', action='store_true', help='open a pull request instead of pushing')
    parser.add_argument('--commit-message', default=None)
    parser.add_argument('--dry-run', action='store_true', help='validate and print what would be uploaded')
    parser.add_argument('--skip-validation', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import flexconv_zoo  # noqa: F401  (registers the models)
    from flexconv_zoo.hub_folder import HubFolderError, validate_hub_folder
    from flexconv_zoo.loading import PretrainedWeightsError

    folder = args.folder
    if not folder.is_dir():
        print(f'error: {folder} is not a folder: pass a hub_configs/<model>.<tag> folder', file=sys.stderr)
        return 2
    owner, _, name = args.repo_id.partition('/')
    if not owner or not name or '/' in name:
        print(f'error: --repo-id {args.repo_id} is not <org>/<model>.<tag>', file=sys.stderr)
        return 2
    if not args.skip_validation:
        try:
            report = validate_hub_folder(folder)
        except (HubFolderError, PretrainedWeightsError, FileNotFoundError) as err:
            print(f'error: {folder} is not ready to upload: {err}', file=sys.stderr)
            return 1
        print(f'validated {folder}: architecture {report["architecture"]}, '
              f'logits reproduce (max abs error {max(report["max_abs_error"].values()):.2e})')
        # a consistent folder can still be the wrong one: <model>.<tag> names the architecture users will load
        for label, tag in (('folder', folder.resolve().name), ('--repo-id', name)):
            if tag.split('.')[0] != report['architecture']:
                print(f'error: {label} {tag} names model {tag.split(".")[0]!r} but {folder / "config.json"} holds '
                      f'{report["architecture"]!r}: rename it <architecture>.<tag> or fix config.json',
                      file=sys.stderr)
                return 1
    files = sorted(p for p in folder.rglob('*') if p.is_file() and not p.name.startswith('.'))
    print(f'{"would upload" if args.dry_run else "uploading"} to https://huggingface.co/{args.repo_id}:')
    for path in files:
        print(f'  {path.relative_to(folder)}  ({path.stat().st_size:,} bytes)')
    if args.dry_run:
        return 0

    from huggingface_hub import HfApi, get_token
    token = get_token()  # HF_TOKEN or the login cache of `hf auth login`
    if not token:
        print('error: no Hugging Face token: set HF_TOKEN (a write token from https://huggingface.co/settings/tokens) '
              'or run `hf auth login`, then run this again', file=sys.stderr)
        return 2
    api = HfApi(token=token)
    try:
        repo = api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type='model')
        commit = api.upload_folder(
            repo_id=repo.repo_id, folder_path=str(folder), revision=args.revision, create_pr=args.create_pr,
            commit_message=args.commit_message or f'Upload {folder.name}', ignore_patterns=['.*'])
    except Exception as err:  # HTTP status, connection and timeout errors: one line, not a network traceback
        detail = ' '.join(str(err).split())[:300]
        print(f'error: upload to {args.repo_id} failed ({type(err).__name__}: {detail}): check the network, that the '
              f'token may write to {owner}, and run this again', file=sys.stderr)
        return 1
    print(f'uploaded: {commit}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
